"""Mass targets (`dump --targets mass --mass M --max-k K`): per position the fewest top ids whose probability
reaches M (at most K), stored without padding as per-position counts and flat id/code rows per block.

Each stored result is checked against an independent computation: the full ensemble distribution
(parity at M = 1, K = V), the smallest prefix of the sorted full distribution (the counts), a decode
written here from plain zarr and the recipe (the reader), a per-position loop (the losses with padding).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from conftest import dump_config
from logitcache.config import RayConfig
from logitcache import open_cache
from logitcache.data.prepared import load_data, spread_indices
from logitcache.dump import dump
from logitcache.teachers.ensemble import Ensemble
from logitcache.errors import CacheCorruptError, LogitcacheError, ResumeMismatchError
from logitcache.teachers.models import load_model
from logitcache.store import CacheStore, block_chunk_path, verify_cache
from test_cross_tokenizer import (odd_data, teachers)  # noqa: F401  (fixtures: data with odd text, teachers on their own tokenizers)

MASS = dict(targets="mass", mass=0.2, max_k=24, temperature=1.0)  # the tiny teachers at T = 1: counts 12..24
ARRAYS = ("tokens", "mass_count", "mass_ids", "mass_probs", "done", "checksum")


def full_distribution(tiny_data, teachers, rows: int, temperature: float, combine="mean-logits"):
    """The chunks a dump with max_chunks=rows caches (N, T) and the ensemble's full distribution (N, T, V)."""
    split = load_data(tiny_data).store.split("train")
    tokens = split[spread_indices(split.shape[0], rows)]
    ensemble = Ensemble([load_model(t) for t in teachers], combine, temperature, torch.device("cpu"))
    return tokens, ensemble.probs(torch.from_numpy(tokens.astype(np.int64))).numpy()


def dense(ids: np.ndarray, probs: np.ndarray, vocab: int) -> np.ndarray:
    """(n, T, K) ids and probs (padding: p 0) -> (n, T, V); padding adds 0."""
    out = np.zeros(ids.shape[:2] + (vocab,), dtype=np.float64)
    for i, t in np.ndindex(*ids.shape[:2]):
        for j in range(ids.shape[-1]):
            out[i, t, ids[i, t, j]] += probs[i, t, j]
    return out


def stored(path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: group[name][:] for name in ARRAYS}


@pytest.fixture(scope="module")
def mass_cache(tmp_path_factory, tiny_data, tiny_teachers):
    out = tmp_path_factory.mktemp("mass") / "mass.zarr"
    dump(dump_config(tiny_data, tiny_teachers, out, **MASS))
    return out


@pytest.mark.parametrize("prob_dtype", ["float32", "sqrt-u7"])
def test_mass_one_with_max_k_vocab_is_the_full_distribution(tmp_path, tiny_data, tiny_teachers, prob_dtype):
    out = tmp_path / "full.zarr"
    dump(dump_config(tiny_data, tiny_teachers, out, targets="mass", mass=1.0, max_k=300, prob_dtype=prob_dtype,
                     max_chunks=16))
    tokens, full = full_distribution(tiny_data, tiny_teachers, 16, 2.0)
    store = CacheStore(out)
    counts = store.arrays["mass_count"][:]
    assert store.arrays["mass_count"].dtype == np.uint16  # 300 ids need more than a byte
    raw = store.decode_raw(store.read_checked_block(0))  # raw: before normalising
    got_tokens, ids, probs = raw.tokens, raw.ids, raw.probs
    assert np.array_equal(got_tokens, tokens[:8].astype(np.int64))
    got = dense(ids, probs, 300)
    # the ids a count leaves out (a running float32 sum reaching 1 early) are the tail: only tiny ones
    assert counts.min() >= 290
    if prob_dtype == "float32":
        assert np.abs(got - full[:8]).max() <= 1e-6
    else:  # within the code's rounding: |sqrt(p') - sqrt(p)| <= 0.5 / 127
        assert np.abs(np.sqrt(got) - np.sqrt(full[:8])).max() <= 0.5 / 127 + 1e-6
    cached = open_cache(out).read(0, 16)
    ids_all, probs_all = cached.ids, cached.probs
    tail = 1.0 - probs_all.sum(-1)
    assert tail.min() >= -1e-6 and (tail.max() <= 1e-5 if prob_dtype == "float32" else tail.max() <= 0.03)


def test_counts_are_the_fewest_top_ids_that_reach_the_mass(mass_cache, tiny_data, tiny_teachers):
    _, full = full_distribution(tiny_data, tiny_teachers, 40, 1.0)
    reader = open_cache(mass_cache)
    cached = reader.read(0, len(reader))
    ids, probs = cached.ids, cached.probs
    counts = zarr.open_group(str(mass_cache), mode="r")["mass_count"][:].astype(int)  # (N, T)
    order = np.argsort(-full, axis=-1, kind="stable")
    running = np.cumsum(np.take_along_axis(full, order, -1), axis=-1)
    expected = np.minimum((running < 0.2).sum(-1) + 1, 24)  # the fewest with sum >= mass, at most max_k
    assert np.abs(counts - expected).max() <= 1  # a float32 running sum within an ulp of the mass may differ by one
    assert (counts == expected).mean() > 0.99
    assert len(np.unique(counts)) > 3 and counts.max() == 24  # ragged: some short, some capped
    for i, t in np.ndindex(*counts.shape):
        c = counts[i, t]
        assert set(ids[i, t, :c]) == set(order[i, t, :c])  # the top c ids (no ties in these float sums)
        assert (probs[i, t, c:] == 0).all() and (ids[i, t, c:] == 0).all()
        assert np.all(np.abs(np.sqrt(probs[i, t, :c]) - np.sqrt(full[i, t, ids[i, t, :c]])) <= 0.5 / 127 + 1e-6)


def plain_zarr_decode(path):
    """The recipe in the attributes, followed with plain zarr and numpy, position by position."""
    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs["logitcache"]
    assert attrs["ragged"] and "mass_ids" in attrs["encodings"]
    r, k, levels = attrs["block_rows"], attrs["k"], 127  # sqrt-u7: p = (code / 127) ** 2
    counts, tokens = group["mass_count"][:], group["tokens"][:]
    n, t = counts.shape
    ids = np.zeros((n, t, k), dtype=np.int64)
    probs = np.zeros((n, t, k), dtype=np.float64)
    for b in range(attrs["n_blocks"]):
        gaps, codes = group["mass_ids"][b], group["mass_probs"][b]
        offset = 0
        for row in range(b * r, min((b + 1) * r, n)):
            for pos in range(t):
                c = int(counts[row, pos])
                ids[row, pos, :c] = np.cumsum(gaps[offset:offset + c].astype(np.int64))
                probs[row, pos, :c] = (codes[offset:offset + c].astype(np.float64) / levels) ** 2
                offset += c
        assert not gaps[offset:].any() and not codes[offset:].any()  # the rest of the row: the fill value
    return tokens, counts, ids, probs


def test_reader_equals_an_independent_decode_with_plain_zarr(mass_cache):
    tokens, counts, ids, probs = plain_zarr_decode(mass_cache)
    reader = open_cache(mass_cache)
    cached = reader.read(0, len(reader))
    got_tokens, got_ids, got_probs = cached.tokens, cached.ids, cached.probs
    assert np.array_equal(got_tokens, tokens)
    for i, t in np.ndindex(*counts.shape):
        c = counts[i, t]
        assert np.all(np.diff(ids[i, t, :c]) > 0)  # ascending, unique
        expected = probs[i, t, :c] / max(1.0, probs[i, t, :c].sum())  # the recipe's normalise step
        by_id = dict(zip(got_ids[i, t, :c].tolist(), got_probs[i, t, :c].tolist()))
        assert sorted(by_id) == ids[i, t, :c].tolist()
        assert np.allclose([by_id[v] for v in ids[i, t, :c].tolist()], expected, atol=1e-6)
        assert np.all(np.diff(got_probs[i, t]) <= 0)  # by decreasing probability, the padding (p 0) last
    unsorted = reader.read_block(1, by_prob=False)  # the loader's order: ascending ids, then the padding
    assert np.array_equal(unsorted.ids, ids[8:16])


def test_the_block_checksum_covers_every_array(mass_cache, tmp_path):
    assert verify_cache(mass_cache) == []
    for name in ("tokens", "mass_count", "mass_ids", "mass_probs"):
        cache = tmp_path / f"{name}.zarr"
        shutil.copytree(mass_cache, cache)
        store = CacheStore(cache, mode="r+")
        arrays = store.read_stored_block(2)
        index = store.layout.block_arrays.index(name)
        changed = arrays[index].copy()
        changed.flat[0] = changed.flat[0] + 1  # a decodable chunk with one value changed
        arrays[index] = changed
        store.arrays[name][store._block_selection(name, 2)] = changed
        problems = verify_cache(cache)
        assert len(problems) == 1 and problems[0].startswith("block 2: checksum mismatch"), (name, problems)
        with pytest.raises(CacheCorruptError, match="checksum"):
            open_cache(cache).read(16, 24)


def test_verify_refuses_counts_and_rows_that_do_not_agree(mass_cache, tmp_path):
    """A block whose data and checksum agree but whose counts or flat rows could not come from a dump."""
    from logitcache.store import block_checksum

    for case in ("count above max_k", "entry past the counts"):
        cache = tmp_path / f"{case.replace(' ', '-')}.zarr"
        shutil.copytree(mass_cache, cache)
        store = CacheStore(cache, mode="r+")
        arrays = store.read_stored_block(1)
        if case == "count above max_k":
            arrays[1] = arrays[1].copy()
            arrays[1][0, 0] = 25
        else:
            arrays[2] = arrays[2].copy()
            arrays[2][0, -1] = 7
        store.write_stored_block(1, arrays, block_checksum(arrays))
        problems = verify_cache(cache)
        assert len(problems) == 1 and problems[0].startswith("block 1:"), problems
        assert ("max_k" in problems[0]) if case == "count above max_k" else ("fill value" in problems[0])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_padding_changes_no_loss_and_no_gradient(temperature):
    """The fused loss and sparse_kl on padded mass targets (id 0, p 0 past the count, id 0 also kept at some
    positions) against a per-position loop over the kept ids only: KL over them plus the tail bucket."""
    from logitcache.training.losses import fused_distill_loss, sparse_kl

    torch.manual_seed(0)
    b, t, v, k = 2, 5, 40, 6
    logits = torch.randn(b, t, v) * 2  # float32, as the student's
    counts = torch.tensor([[1, 6, 3, 0, 2], [4, 6, 1, 5, 2]])
    ids = torch.zeros(b, t, k, dtype=torch.int64)
    probs = torch.zeros(b, t, k)
    for i in range(b):
        for j in range(t):
            c = int(counts[i, j])
            chosen = torch.randperm(v)[:c]
            if j == 1:
                chosen[0] = 0  # id 0 kept and repeated by the padding
            ids[i, j, :c] = chosen
            probs[i, j, :c] = torch.rand(c) / (c + 1)
    input_ids = torch.randint(0, v, (b, t))

    def reference(z):  # in float64
        q = torch.softmax(z.double() / temperature, -1)
        kl = []
        for i in range(b):
            for j in range(t):
                c = int(counts[i, j])
                p, qk = probs[i, j, :c].double(), q[i, j, ids[i, j, :c]]
                p_tail, q_tail = 1 - p.sum(), 1 - qk.sum()
                kl.append((p * torch.log(p / qk)).sum() + p_tail * torch.log(p_tail / q_tail))
        kl = temperature ** 2 * torch.stack(kl).mean()
        ce = torch.nn.functional.cross_entropy(z[:, :-1].double().reshape(-1, v), input_ids[:, 1:].reshape(-1))
        return 0.5 * ce + 0.5 * kl, kl

    z = logits.clone().requires_grad_(True)
    loss_ref, kl_ref = reference(z)
    loss_ref.backward()
    z2 = logits.clone().requires_grad_(True)
    loss, kl, _ = fused_distill_loss(z2, ids, probs, input_ids, temperature, 0.5)
    loss.backward()
    assert abs(float(kl) - float(kl_ref.detach())) < 1e-5 and abs(float(loss.detach()) - float(loss_ref.detach())) < 1e-5
    assert torch.allclose(z2.grad, z.grad.float(), atol=1e-6)
    assert abs(float(sparse_kl(logits, ids, probs, temperature)) - float(kl_ref)) < 1e-5


def test_copy_and_resume_give_the_same_bytes(mass_cache, tmp_path, tiny_data, tiny_teachers, monkeypatch):
    from logitcache.store.copy import copy_cache

    copied = tmp_path / "copy.zarr"
    copy_cache(mass_cache, copied)
    files = lambda p: {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}  # noqa: E731
    assert files(copied) == files(mass_cache)  # metadata included
    out = tmp_path / "resumed.zarr"
    original = CacheStore.write_block
    written = []

    def failing(self, block, *args, **kwargs):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        original(self, block, *args, **kwargs)
        written.append(block)

    monkeypatch.setattr(CacheStore, "write_block", failing)
    with pytest.raises(LogitcacheError, match="No space left"):
        dump(dump_config(tiny_data, tiny_teachers, out, writer_threads=1, **MASS))
    monkeypatch.setattr(CacheStore, "write_block", original)
    with pytest.raises(ResumeMismatchError, match="mass: 0.2 in the cache, 0.3 here"):
        dump(dump_config(tiny_data, tiny_teachers, out, **(MASS | {"mass": 0.3})), resume=True)
    with pytest.raises(ResumeMismatchError, match="max_k"):
        dump(dump_config(tiny_data, tiny_teachers, out, **(MASS | {"max_k": 16})), resume=True)
    report = dump(dump_config(tiny_data, tiny_teachers, out, **MASS), resume=True)
    assert report.blocks_skipped == 2 and report.blocks_written == 3
    a, b = stored(out), stored(mass_cache)
    assert all(np.array_equal(a[name], b[name]) for name in ARRAYS)


def test_mass_settings_are_recorded_and_top_k_caches_keep_their_attributes(mass_cache, tiny_cache):
    attrs = open_cache(mass_cache).attrs
    assert (attrs["targets"], attrs["mass"], attrs["max_k"], attrs["k"], attrs["ragged"]) == ("mass", 0.2, 24, 24, True)
    plain = open_cache(tiny_cache).attrs
    assert not {"mass", "max_k", "ragged"} & set(plain)
    from logitcache.config import dump_output_settings

    assert "mass" not in dump_output_settings(plain["config"]) and "top_k" not in dump_output_settings(attrs["config"])


def test_the_rows_past_the_counts_cost_no_bytes(mass_cache):
    """Stored without padding: each block's flat chunk takes within a few bytes of what its kept entries
    alone take under the same codec (the fill value past them compresses to a run)."""
    from zarr.storage import MemoryStore

    from logitcache.store import cache_summary

    def chunk_bytes(array, values):  # the chunk one (1, n) array of these values stores, same codecs
        memory = MemoryStore()
        alone = zarr.create_array(store=memory, shape=values.shape, chunks=values.shape, dtype=values.dtype,
                                  compressors=array.compressors, fill_value=0)
        alone[:] = values
        return len(memory._store_dict["c/0/0"].to_bytes())

    store = CacheStore(mass_cache)
    for block in range(store.layout.n_blocks):
        arrays = store.read_stored_block(block)
        total = int(arrays[1].sum())
        assert 0 < total < store.layout.capacity
        for index, name in ((2, "mass_ids"), (3, "mass_probs")):
            on_disk = block_chunk_path(mass_cache, name, block).stat().st_size
            assert on_disk <= chunk_bytes(store.arrays[name], np.ascontiguousarray(arrays[index][:, :total])) + 32
    summary = cache_summary(mass_cache)
    assert 12 <= summary["mean_ids_per_position"] < 24
    assert summary["raw_bytes_per_token"] == pytest.approx(summary["mean_ids_per_position"] * 3 + 1)  # uint16 + uint8


def test_student_trains_on_mass_targets_through_the_fused_loss(mass_cache, tiny_data, tmp_path, monkeypatch):
    from conftest import tiny_train
    from logitcache.training.losses import distill
    from logitcache.train_student import StudentConfig, train_student

    calls = []
    fused = distill.fused_linear_distill
    monkeypatch.setattr(distill, "fused_linear_distill", lambda *a, **k: calls.append(1) or fused(*a, **k))
    report = train_student(StudentConfig(cache=mass_cache, data=tiny_data, out=tmp_path / "s", preset="llama-tiny",
                                         train=tiny_train(3)))
    assert calls and np.isfinite(report.best_val_ce)


def test_mass_targets_from_the_cli_and_bad_settings_in_one_line(tmp_path, tiny_data, tiny_teachers):
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    runner = CliRunner()
    base = ["dump", "--data", tiny_data, "--teacher", tiny_teachers[0], "--device", "cpu", "--max-chunks", 8,
            "--block-rows", 8, "--temperature", 1.0, "--targets", "mass"]
    out = tmp_path / "cli.zarr"
    result = runner.invoke(app, [str(a) for a in base + ["--out", out, "--mass", 0.3, "--max-k", 5]])
    assert result.exit_code == 0, result.output
    counts = zarr.open_group(str(out), mode="r")["mass_count"][:]
    assert counts.max() == 5 and counts.min() >= 1 and open_cache(out).attrs["mass"] == 0.3
    for flags, message in ((["--mass", 0], "mass must be in (0, 1]"), (["--mass", 1.5], "mass must be in (0, 1]"),
                           (["--max-k", 0], "max_k must be positive"),
                           (["--max-k", 301], "max_k 301 is larger than the vocabulary")):
        result = runner.invoke(app, [str(a) for a in base + ["--out", tmp_path / "bad.zarr"] + flags])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output


@pytest.mark.slow
def test_torchrun_and_s3_mass_dumps_equal_one_process(tmp_path, tiny_data, tiny_teachers, mass_cache, s3):
    """Two torchrun ranks write a mass cache into a bucket; it decodes and stores as the one-process local dump."""
    url = f"{s3}/mass.zarr"
    args = ["dump", "--data", tiny_data, "--teacher", tiny_teachers[0], "--teacher", tiny_teachers[1], "--out", url,
            "--top-k", 8, "--temperature", 1.0, "--block-rows", 8, "--batch-size", 4, "--max-chunks", 40, "--device", "cpu",
            "--prob-dtype", "sqrt-u7", "--targets", "mass", "--mass", 0.2, "--max-k", 24]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                           "logitcache_cli", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    remote, local = open_cache(url), open_cache(mass_cache)
    got, expected = remote.read(0, 40).arrays(), local.read(0, 40).arrays()
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
    from logitcache.store.backends import as_location

    theirs, ours = as_location(url), as_location(mass_cache)
    chunks = sorted(k for k in ours.sizes() if "/c/" in k)
    assert chunks == sorted(k for k in theirs.sizes() if "/c/" in k)
    assert all(theirs.read_bytes(k) == ours.read_bytes(k) for k in chunks)
    assert verify_cache(url) == []
    back = tmp_path / "back.zarr"
    from logitcache.store.copy import copy_cache

    copy_cache(url, back)
    assert json.loads((back / "zarr.json").read_text()) == json.loads(as_location(url).read_bytes("zarr.json"))


def test_cache_size_sweeps_mass_targets_beside_top_k_with_two_student_seeds(tmp_path, tiny_data, tiny_teachers):
    """bench cache-size --mass: each mass row's KL recomputed here per position from the reader and the full
    distribution (tail spread over the ids that position did not keep), its k the mean count, one student per
    seed, and the equal-bytes summary recomputed from the rows."""
    from logitcache.bench import CacheSizeConfig, cache_size

    config = CacheSizeConfig(data=tiny_data, teachers=tiny_teachers, out=tmp_path / "b", ks=(4, 32), masses=(0.1, 0.2),
                             max_k=24, chunks=16, temperature=1.0, train_steps=2, student_preset="llama-tiny",
                             student_batch_size=8, student_seeds=(0, 1))
    payload = cache_size(config)
    rows = {(r["targets"], r.get("mass", r["k"])): r for r in payload["rows"]}
    assert set(rows) == {("topk", 4), ("topk", 32), ("mass", 0.1), ("mass", 0.2)}
    _, full = full_distribution(tiny_data, tiny_teachers, 16, 1.0)
    for mass in (0.1, 0.2):
        row = rows[("mass", mass)]
        cache = tmp_path / "b" / "caches" / f"mass{mass}-sqrt-u7.zarr"
        cached = open_cache(cache).read(0, 16)
        ids, probs = cached.ids, cached.probs
        counts = zarr.open_group(str(cache), mode="r")["mass_count"][:]
        kl = []
        for i, t in np.ndindex(*counts.shape):
            c = int(counts[i, t])
            approx = np.full(300, (1 - probs[i, t, :c].sum()) / (300 - c))
            approx[ids[i, t, :c]] = probs[i, t, :c]
            kl.append(float((full[i, t] * np.log(full[i, t] / np.maximum(approx, 1e-12))).sum()))
        assert row["kl"] == pytest.approx(np.mean(kl), rel=1e-3, abs=1e-5)
        assert row["k"] == pytest.approx(counts.mean()) and row["max_k"] == 24
        assert row["mass_kept"] == pytest.approx(probs.sum(-1).mean(), rel=1e-4)
        assert len(row["student_ces"]) == 2 and row["student_ces"][0] != row["student_ces"][1]
        assert row["student_ce"] == pytest.approx(np.mean(row["student_ces"]))
    assert rows[("mass", 0.1)]["kl"] > rows[("mass", 0.2)]["kl"] and rows[("mass", 0.1)]["k"] < rows[("mass", 0.2)]["k"]
    summary = payload["equal_bytes"]
    reference = rows[("topk", 32)]["student_ce"]
    within = [r for r in (rows[("mass", 0.1)], rows[("mass", 0.2)]) if r["student_ce"] <= reference + 0.005]
    expected = min(within, key=lambda r: r["bytes_per_token"]) if within else None
    assert summary["reached"] == bool(within)
    assert (summary["smallest"] or {}).get("mass") == (expected or {}).get("mass")
    text = (tmp_path / "b" / "cache_size.md").read_text()
    assert "| mass | 0.1 (" in text and "equal bytes: top-32" in text
    assert (tmp_path / "b" / "cache_size.png").stat().st_size > 10_000


@pytest.mark.slow
def test_ray_engine_writes_the_same_mass_cache(tmp_path, tiny_data, tiny_teachers, mass_cache):
    """dump --engine ray (a local cluster, 2 workers) computes each block through the same block_targets: every
    stored chunk equals the one-process mass cache's."""
    ray = pytest.importorskip("ray")
    from logitcache.store.backends import as_location

    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        out = tmp_path / "ray.zarr"
        dump(dump_config(tiny_data, tiny_teachers, out, engine="ray", ray=RayConfig(workers="2"), **MASS))
    finally:
        ray.shutdown()
    theirs, ours = as_location(out), as_location(mass_cache)
    chunks = sorted(k for k in ours.sizes() if "/c/" in k)
    assert chunks == sorted(k for k in theirs.sizes() if "/c/" in k)
    assert all(theirs.read_bytes(k) == ours.read_bytes(k) for k in chunks)
    assert verify_cache(out) == []


def test_mass_targets_from_teachers_with_tokenizers_of_their_own(tmp_path, odd_data, teachers):
    """The cross-tokenizer path: counts are 0 where no teacher is aligned (teacher_count 0, kept beside them),
    and elsewhere the fewest top ids of the mixed distribution (the float32 top-k = V cache of the same
    teachers) that reach the mass, with its probabilities."""
    dirs = [teachers["metaspace"], teachers["byte-level"]]
    settings = dict(combine="mean-probs", prob_dtype="float32", max_chunks=16, min_coverage=0.2, temperature=1.0)
    dump(dump_config(odd_data, dirs, tmp_path / "full.zarr", top_k=300, **settings))
    dump(dump_config(odd_data, dirs, tmp_path / "mass.zarr", targets="mass", mass=0.05, max_k=24, **settings))
    full = open_cache(tmp_path / "full.zarr")
    cached = full.read(0, 16)
    ids, probs = cached.ids, cached.probs
    dense = np.zeros((*ids.shape[:2], 300))
    np.put_along_axis(dense, ids, probs, -1)
    reader = open_cache(tmp_path / "mass.zarr")
    cached = reader.read(0, 16)
    m_ids, m_probs = cached.ids, cached.probs
    count = reader.read(0, 16).teacher_count
    assert np.array_equal(count, full.read(0, 16).teacher_count) and (count == 0).any() and (count > 0).any()
    kept = zarr.open_group(str(tmp_path / "mass.zarr"), mode="r")["mass_count"][:].astype(int)
    assert (kept[count == 0] == 0).all() and (kept[count > 0] > 0).all()
    running = np.cumsum(-np.sort(-dense, -1), -1)
    expected = np.minimum((running < 0.05).sum(-1) + 1, 24)
    assert np.abs(kept - expected)[count > 0].max() <= 1 and (kept == expected)[count > 0].mean() > 0.99
    assert len(np.unique(kept[count > 0])) > 1
    for i, t in zip(*np.nonzero(count > 0)):
        c = kept[i, t]
        assert np.allclose(m_probs[i, t, :c], dense[i, t, m_ids[i, t, :c]], atol=1e-6)
        assert (m_probs[i, t, c:] == 0).all()
