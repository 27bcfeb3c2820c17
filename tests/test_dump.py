import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import dump_config
from logitcache import open_cache
from logitcache.store import CacheStore, verify_cache
from logitcache.data.prepared import load_data, spread_indices
from logitcache.dump import dump
from logitcache.teachers.ensemble import Ensemble
from logitcache.errors import LogitcacheError, ResumeMismatchError
from logitcache.teachers.models import build_model, get_preset, load_model

ARRAYS = ("tokens", "topk_ids", "topk_probs", "done", "checksum")


def stored_arrays(path):
    group = zarr.open_group(str(path), mode="r")
    names = ARRAYS + (("sample_weights",) if "sample_weights" in group else ())
    return {name: group[name][:] for name in names}


def assert_same_store(a, b):
    xa, xb = stored_arrays(a), stored_arrays(b)
    assert xa.keys() == xb.keys()
    for name in xa:
        assert np.array_equal(xa[name], xb[name]), name


def full_ensemble(tiny_data, tiny_teachers, combine="mean-logits", temperature=2.0, rows=40):
    split = load_data(tiny_data).store.split("train")
    tokens = split[spread_indices(split.shape[0], rows)]  # the chunks a dump with max_chunks=rows caches
    models = [load_model(t) for t in tiny_teachers]
    ensemble = Ensemble(models, combine, temperature, torch.device("cpu"))
    return tokens, ensemble.probs(torch.from_numpy(tokens.astype(np.int64)))


@pytest.mark.parametrize("n_teachers", [1, 2])
@pytest.mark.parametrize("combine", ["mean-logits", "mean-probs"])
def test_k_equal_vocab_float32_is_the_full_ensemble(tmp_path, tiny_data, tiny_teachers, combine, n_teachers):
    out = tmp_path / "full.zarr"
    teachers = tiny_teachers[:n_teachers]
    dump(dump_config(tiny_data, teachers, out, top_k=300, prob_dtype="float32", combine=combine, max_chunks=16))
    tokens, full = full_ensemble(tiny_data, teachers, combine, rows=16)
    cached = open_cache(out).read(0, 16)
    got_tokens, ids, probs = cached.tokens, cached.ids, cached.probs
    dense = np.zeros_like(full.numpy())
    np.put_along_axis(dense, ids, probs, -1)
    assert np.array_equal(got_tokens, tokens.astype(np.int64))
    assert np.allclose(dense, full.numpy(), atol=1e-6)
    models = [load_model(t) for t in teachers]  # the direct computation: models, softmax, torch.topk
    with torch.no_grad():
        logits = [m(torch.from_numpy(tokens.astype(np.int64))).logits for m in models]
    if combine == "mean-probs":
        direct = sum(torch.softmax(z / 2.0, -1) for z in logits) / len(logits)
    else:
        direct = torch.softmax(sum(logits) / len(logits) / 2.0, -1)
    assert np.allclose(dense, direct.numpy(), atol=1e-5)
    top_probs, top_ids = direct.topk(8, -1)
    small = tmp_path / "top8.zarr"
    dump(dump_config(tiny_data, teachers, small, top_k=8, prob_dtype="float16", combine=combine, max_chunks=16))
    cached = open_cache(small).read(0, 16)
    ids8, probs8 = cached.ids, cached.probs
    assert np.array_equal(np.sort(ids8, -1), np.sort(top_ids.numpy(), -1))
    assert np.allclose(probs8, top_probs.numpy(), rtol=2e-3, atol=1e-6)  # float16's 11 bits, then normalised


def test_cache_attributes_and_integrity(tiny_cache, tiny_data):
    reader = open_cache(tiny_cache)
    attrs = reader.attrs
    assert attrs["k"] == 8 and attrs["temperature"] == 2.0 and attrs["combine"] == "mean-logits"
    assert attrs["data_fingerprint"] == load_data(tiny_data).fingerprint
    assert [t["arch"] for t in attrs["teachers"]] == ["llama", "gpt2"]
    assert all(len(t["sha256"]) == 64 and t["params"] > 0 for t in attrs["teachers"])
    assert attrs["config"]["top_k"] == 8
    assert verify_cache(tiny_cache) == []
    cached = reader.read(0, len(reader))
    ids, probs = cached.ids, cached.probs
    assert (np.diff(probs, axis=-1) <= 0).all() and (probs.sum(-1) <= 1 + 1e-6).all()


@pytest.mark.parametrize("prob_dtype", ["sqrt-u7", "log-s272"])
def test_topk_codes_are_close_to_exact(tmp_path, tiny_data, tiny_teachers, prob_dtype):
    exact, coded = tmp_path / "exact.zarr", tmp_path / "coded.zarr"
    dump(dump_config(tiny_data, tiny_teachers, exact, prob_dtype="float32"))
    dump(dump_config(tiny_data, tiny_teachers, coded, prob_dtype=prob_dtype))
    cached = open_cache(exact).read(0, 40)
    ids_a, p = cached.ids, cached.probs
    cached = open_cache(coded).read(0, 40)
    ids_b, q = cached.ids, cached.probs
    assert np.array_equal(np.sort(ids_a, -1), np.sort(ids_b, -1))
    order_a, order_b = np.argsort(ids_a, -1), np.argsort(ids_b, -1)
    p, q = np.take_along_axis(p, order_a, -1), np.take_along_axis(q, order_b, -1)
    pt, qt = 1 - p.sum(-1), np.maximum(1 - q.sum(-1), 1e-12)
    kl = (p * np.log(p / np.maximum(q, 1e-30))).sum(-1) + pt * np.log(np.maximum(pt, 1e-12) / qt)
    assert kl.mean() < 0.01


def test_resumed_dump_equals_single_shot_after_a_write_failure(tmp_path, tiny_data, tiny_teachers, tiny_cache, monkeypatch):
    """A failing store (disk full) stops the dump with a clear error; --resume completes it identically."""
    out = tmp_path / "c.zarr"
    original = CacheStore.write_block
    written = []

    def failing(self, block, *args, **kwargs):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        original(self, block, *args, **kwargs)
        written.append(block)

    monkeypatch.setattr(CacheStore, "write_block", failing)
    with pytest.raises(LogitcacheError, match="No space left.*--resume"):  # one writer thread: a fixed failure point
        dump(dump_config(tiny_data, tiny_teachers, out, writer_threads=1))
    monkeypatch.setattr(CacheStore, "write_block", original)
    done_before = stored_arrays(out)["done"]
    assert done_before.sum() == 2
    with pytest.raises(LogitcacheError, match="incomplete"):
        open_cache(out)
    report = dump(dump_config(tiny_data, tiny_teachers, out), resume=True)
    assert report.blocks_skipped == 2 and report.blocks_written == 3
    assert_same_store(out, tiny_cache)


def test_ranks_write_disjoint_blocks_and_match_one_process(tmp_path, tiny_data, tiny_teachers, tiny_cache, monkeypatch):
    out = tmp_path / "c.zarr"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        report = dump(dump_config(tiny_data, tiny_teachers, out), resume=rank == 1)
        assert report.blocks_written == (3 if rank == 0 else 2)
    assert_same_store(out, tiny_cache)


def test_second_writer_without_resume_is_refused(tiny_data, tiny_teachers, tiny_cache):
    before = stored_arrays(tiny_cache)
    files_before = {p: p.read_bytes() for p in sorted(tiny_cache.rglob("*")) if p.is_file()}
    with pytest.raises(LogitcacheError, match="already exists"):
        dump(dump_config(tiny_data, tiny_teachers, tiny_cache))
    after = stored_arrays(tiny_cache)
    assert before.keys() == after.keys() and all(np.array_equal(before[n], after[n]) for n in before)
    # not one byte of the store changed (metadata and done markers included)
    assert {p: p.read_bytes() for p in sorted(tiny_cache.rglob("*")) if p.is_file()} == files_before


def test_resume_with_another_config_is_refused(tmp_path, tiny_data, tiny_teachers, copy_of, tiny_cache):
    cache = copy_of(tiny_cache)
    with pytest.raises(LogitcacheError, match="different config"):
        dump(dump_config(tiny_data, tiny_teachers, cache, temperature=1.0), resume=True)


def store_files(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def set_root_attrs(path, change):
    """Rewrite a local cache's logitcache attributes through `change(attrs)` (a cache from another machine)."""
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs["logitcache"])
    change(attrs)
    group.attrs["logitcache"] = attrs


def test_resume_refuses_a_cache_holding_a_symbolic_link(tmp_path, tiny_data, tiny_teachers, copy_of, tiny_cache):
    """An array folder of the cache replaced by a link: a resumed dump would write its blocks where the
    link points; refused before anything is written."""
    from logitcache.dump import dump
    from logitcache.errors import LogitcacheError
    from logitcache.store import block_chunk_path

    cache = copy_of(tiny_cache)
    block_chunk_path(cache, "done", 2).unlink()
    moved = tmp_path / "moved"
    (cache / "topk_probs").rename(moved)
    (cache / "topk_probs").symlink_to(moved)
    before = {p: p.read_bytes() for p in moved.rglob("*") if p.is_file()}
    with pytest.raises(LogitcacheError, match="symbolic link"):
        dump(dump_config(tiny_data, tiny_teachers, cache), resume=True)
    assert {p: p.read_bytes() for p in moved.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("setting,value,message", [
    ("precision", "bf16", 'precision: "fp32" in the cache, "bf16" here'),
    ("batch_size", 3, "batch_size: 4 in the cache, 3 here"),
    ("logit_budget_mb", 1, "logit_budget_mb: 1024 in the cache, 1 here"),
    ("top_k", 4, "top_k: 8 in the cache, 4 here"),
])
def test_resume_refuses_each_setting_that_changes_the_bytes_by_name(tiny_data, tiny_teachers, copy_of, tiny_cache,
                                                                    setting, value, message):
    """An interrupted cache resumed with another precision, batch or logit budget would mix blocks computed two
    ways: refused in one line naming the setting with both values, the cache untouched."""
    cache = copy_of(tiny_cache)
    zarr.open_group(str(cache), mode="r+")["done"][3:] = 0  # blocks 3 and 4 still to do
    before = store_files(cache)
    with pytest.raises(ResumeMismatchError, match=re.escape(message)) as caught:
        dump(dump_config(tiny_data, tiny_teachers, cache, **{setting: value}), resume=True)
    assert "\n" not in str(caught.value)
    assert store_files(cache) == before


def test_resume_accepts_speed_settings_and_moved_inputs(tmp_path, tiny_data, tiny_teachers, tiny_cache):
    """writer_threads and the paths of the data and the cache (the data compared by its fingerprint) change no
    byte: a resume with all of them changed, and `--device auto` for the cache's cpu, finishes the cache
    exactly. Teachers are compared with their paths."""
    cache = tmp_path / "moved" / "cache.zarr"
    shutil.copytree(tiny_cache, cache)
    zarr.open_group(str(cache), mode="r+")["done"][2:] = 0
    data = shutil.copytree(tiny_data, tmp_path / "data-elsewhere")
    teachers = [shutil.copytree(t, tmp_path / f"teacher-{i}") for i, t in enumerate(tiny_teachers)]
    with pytest.raises(ResumeMismatchError, match="teachers differs"):
        dump(dump_config(data, teachers, cache), resume=True)
    report = dump(dump_config(data, tiny_teachers, cache, writer_threads=3, device="auto"), resume=True)
    assert report.blocks_skipped == 2 and report.blocks_written == 3
    assert_same_store(cache, tiny_cache)


def test_resume_refuses_a_teacher_whose_architecture_settings_changed(tmp_path, tiny_data, tiny_teachers, tiny_cache):
    """The same weights under another config.json setting compute other logits (here GPT-2's layer-norm
    epsilon): refused; a config.json that differs only in bookkeeping (the transformers version that saved
    it) resumes and finishes the cache exactly."""
    import json

    cache = tmp_path / "cache.zarr"
    shutil.copytree(tiny_cache, cache)
    zarr.open_group(str(cache), mode="r+")["done"][3:] = 0
    teachers = [tmp_path / "teacher-0", tmp_path / "teacher-1"]
    config_json = teachers[1] / "config.json"

    def rewrite(change):
        for src, dst in zip(tiny_teachers, teachers):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        settings = json.loads(config_json.read_text())
        change(settings)
        config_json.write_text(json.dumps(settings))

    set_root_attrs(cache, lambda attrs: attrs.update(teachers=[
        dict(t, path=str(teachers[i])) for i, t in enumerate(attrs["teachers"])]))  # the copies' paths
    rewrite(lambda c: c.update(layer_norm_epsilon=c["layer_norm_epsilon"] * 10))
    with pytest.raises(ResumeMismatchError, match="teachers differs"):
        dump(dump_config(tiny_data, teachers, cache), resume=True)
    rewrite(lambda c: c.update(transformers_version="0.0.1"))
    report = dump(dump_config(tiny_data, teachers, cache), resume=True)
    assert report.blocks_written == 2
    assert_same_store(cache, tiny_cache)


def test_resume_compares_the_device_and_precision_auto_resolved_to(tiny_data, tiny_teachers, copy_of, tiny_cache):
    """A cache whose blocks were computed on cuda in bf16 (what `--precision auto` gives on a GPU machine) is
    refused on this CPU although the settings are the same; a cache without those attributes compares the
    settings as given."""
    cache = copy_of(tiny_cache)
    set_root_attrs(cache, lambda a: a.update(device="cuda", precision="bf16"))
    with pytest.raises(ResumeMismatchError, match=re.escape('device: "cuda" in the cache, "cpu" here; precision: '
                                                            '"bf16" in the cache, "fp32" here')):
        dump(dump_config(tiny_data, tiny_teachers, cache, device="cpu"), resume=True)
    set_root_attrs(cache, lambda a: [a.pop(k) for k in ("device", "precision")])
    assert dump(dump_config(tiny_data, tiny_teachers, cache), resume=True).blocks_written == 0
    with pytest.raises(ResumeMismatchError, match=re.escape('precision: "auto" in the cache, "fp16" here')):
        dump(dump_config(tiny_data, tiny_teachers, cache, precision="fp16"), resume=True)


def test_teachers_that_disagree_on_vocabulary_are_refused(tmp_path, tiny_data, tiny_teachers):
    other = tmp_path / "other"
    build_model(get_preset("llama-tiny"), 400).save_pretrained(str(other))
    with pytest.raises(LogitcacheError, match="disagree on vocabulary"):
        dump(dump_config(tiny_data, (tiny_teachers[0], other), tmp_path / "c.zarr"))
    assert not (tmp_path / "c.zarr").exists()


def test_not_a_causal_lm_and_k_above_vocab_are_refused(tmp_path, tiny_data, tiny_teachers):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"model_type": "not-a-model"}')
    with pytest.raises(LogitcacheError, match="not a loadable causal LM"):
        dump(dump_config(tiny_data, (tmp_path / "junk",), tmp_path / "c.zarr"))
    with pytest.raises(LogitcacheError, match="larger than the vocabulary"):
        dump(dump_config(tiny_data, tiny_teachers, tmp_path / "c.zarr", top_k=301))


def test_sampled_dump_is_deterministic_across_resume_and_ranks(tmp_path, tiny_data, tiny_teachers, monkeypatch):
    single, ranked = tmp_path / "single.zarr", tmp_path / "ranked.zarr"
    dump(dump_config(tiny_data, tiny_teachers, single, targets="sample", samples=12, max_chunks=24))
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank in (0, 2, 1):  # rank 0 creates the store; the others only need their rank
        monkeypatch.setenv("RANK", str(rank))
        dump(dump_config(tiny_data, tiny_teachers, ranked, targets="sample", samples=12, max_chunks=24))
    assert_same_store(single, ranked)
    reader = open_cache(single)
    assert reader.attrs["targets"] == "sample" and reader.layout.with_weights
    cached = reader.read_block(0)
    ids, probs, weights = cached.ids, cached.probs, cached.weights
    assert np.allclose(weights.sum(-1), 1.0, atol=1e-3)  # q = p: weights are counts / N


def test_two_process_torchrun_dump_equals_one_process(tmp_path, tiny_data, tiny_teachers, tiny_cache):
    import os
    import subprocess
    import sys

    out = tmp_path / "c.zarr"
    args = ["dump", "--data", tiny_data, "--teacher", tiny_teachers[0], "--teacher", tiny_teachers[1], "--out", out,
            "--top-k", 8, "--temperature", 2.0, "--block-rows", 8, "--batch-size", 4, "--max-chunks", 40, "--device", "cpu",
            "--prob-dtype", "sqrt-u7"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                           "logitcache_cli", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_store(out, tiny_cache)


def test_layers_import_only_what_they_use():
    """The dump never imports the training loop; the CLI's start-up imports neither torch nor zarr."""
    import subprocess
    import sys

    code = ("import sys, {module}; bad = [m for m in {forbidden} if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    for module, forbidden in (("logitcache.dump", ["logitcache.training.loop", "logitcache.train_student", "logitcache.training.checkpoint"]),
                              ("logitcache_cli.app", ["torch", "zarr", "transformers", "matplotlib"])):
        proc = subprocess.run([sys.executable, "-c", code.format(module=module, forbidden=forbidden)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, (module, proc.stdout, proc.stderr[-500:])


def test_parallel_writer_is_byte_identical_to_one_thread(tmp_path, tiny_data, tiny_teachers):
    """Blocks encoded, compressed and committed on 4 threads: every stored file equals a 1-thread write."""
    stores = {}
    for threads in (1, 4):
        out = tmp_path / f"c{threads}.zarr"
        dump(dump_config(tiny_data, tiny_teachers, out, writer_threads=threads, block_rows=4))
        stores[threads] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*"))
                           if p.is_file() and p.name != "zarr.json"}
    assert stores[1].keys() == stores[4].keys() and len(stores[1]) > 40
    assert all(stores[1][name] == stores[4][name] for name in stores[1])
    assert verify_cache(tmp_path / "c4.zarr") == []


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_gather_block_hands_the_writer_the_batches_in_order(device):
    """A block's per-batch results reach the writer concatenated in batch order, ids as int32 (CUDA: through
    pinned host tensors and one event, checked against a plain synchronous copy)."""
    from logitcache.teachers.targets import gather_block

    gen = torch.Generator().manual_seed(0)
    batches = [[torch.randint(0, 50_000, (b, 4, 3), generator=gen), torch.rand(b, 4, 3, generator=gen)] for b in (2, 3, 1)]
    copy = gather_block([[t.to(device) for t in batch] for batch in batches])
    ids, probs = copy.wait().values()
    assert ids.dtype == np.int32 and probs.dtype == np.float32 and ids.shape == (6, 4, 3)
    assert np.array_equal(ids, np.concatenate([b[0].numpy() for b in batches]))
    assert np.array_equal(probs, np.concatenate([b[1].numpy() for b in batches]))
    if device == "cuda":
        assert all(t.is_pinned() for t in copy.tensors.values())


def _dump_cli(data, teachers, out, *flags):
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    args = ["dump", "--data", data, "--teacher", teachers[0], "--out", out, "--top-k", 4, "--block-rows", 8,
            "--batch-size", 4, "--max-chunks", 16, "--device", "cpu", *flags]
    return CliRunner().invoke(app, [str(a) for a in args])


def _objects(where) -> dict[str, bytes]:
    from logitcache.store.backends import as_location

    location = as_location(where)
    return {key: location.read_bytes(key) for key in location.sizes()}


def _refused(result, where, named: str) -> None:
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert str(where) in line and named in line and "not replaced" in line, line


def test_overwrite_refuses_a_folder_that_is_not_a_cache(tmp_path, tiny_data, tiny_teachers):
    """--overwrite on a folder holding a file of the user's: one line naming it, exit 2, the file kept."""
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("mine")
    _refused(_dump_cli(tiny_data, tiny_teachers, out, "--overwrite"), out, "chapter1.tex")
    assert [p.name for p in out.iterdir()] == ["chapter1.tex"] and (out / "chapter1.tex").read_text() == "mine"


def test_overwrite_refuses_the_parent_of_a_cache(tmp_path, tiny_data, tiny_teachers):
    """A typo naming the folder above a cache: the cache and its neighbours are kept."""
    cache = tmp_path / "runs" / "cache.zarr"
    assert _dump_cli(tiny_data, tiny_teachers, cache).exit_code == 0
    (tmp_path / "runs" / "notes.txt").write_text("keep")
    before = _objects(tmp_path / "runs")
    _refused(_dump_cli(tiny_data, tiny_teachers, tmp_path / "runs", "--overwrite"), tmp_path / "runs",
             "cache.zarr/")
    assert _objects(tmp_path / "runs") == before


def test_overwrite_refuses_a_data_dir_and_a_file(tmp_path, tiny_data, tiny_teachers, copy_of):
    data = copy_of(tiny_data)
    before = _objects(data)
    _refused(_dump_cli(tiny_data, tiny_teachers, data, "--overwrite"), data, "tokenizer.json")
    assert _objects(data) == before
    (tmp_path / "out.zarr").write_text("a file")
    _refused(_dump_cli(tiny_data, tiny_teachers, tmp_path / "out.zarr", "--overwrite"), tmp_path / "out.zarr", "file")
    assert (tmp_path / "out.zarr").read_text() == "a file"


def test_overwrite_refuses_a_bucket_root_and_a_prefix_of_other_objects(s3, tiny_data, tiny_teachers):
    """`--out s3://bucket --overwrite` and a prefix holding objects a cache does not write: every object kept,
    the bucket too; a cache at the prefix beside foreign objects is refused as well."""
    from logitcache.store.backends import as_location

    for key in ("photos/cat.jpg", "cache.zarr/zarr.json"):
        as_location(s3).write_bytes(key, b"mine")
    before = _objects(s3)
    _refused(_dump_cli(tiny_data, tiny_teachers, s3, "--overwrite"), s3, "photos/cat.jpg")
    assert _objects(s3) == before
    _refused(_dump_cli(tiny_data, tiny_teachers, f"{s3}/photos", "--overwrite"), f"{s3}/photos", "cat.jpg")
    assert _objects(s3) == before
    cache = f"{s3}/runs/cache.zarr"
    assert _dump_cli(tiny_data, tiny_teachers, cache).exit_code == 0
    as_location(cache).write_bytes("README.md", b"mine")
    kept = _objects(cache)
    _refused(_dump_cli(tiny_data, tiny_teachers, cache, "--overwrite"), cache, "README.md")
    assert _objects(cache) == kept and _objects(s3).items() >= before.items()


def test_overwrite_refuses_user_files_under_a_cache_array_name(tmp_path, tiny_data, tiny_teachers):
    """A name a cache uses at the top is not enough: a folder holding only tokens/notes.txt, a cache with a
    file of the user's inside checksum/, and a folder of empty folders are refused, everything kept."""
    only = tmp_path / "project"
    (only / "tokens").mkdir(parents=True)
    (only / "tokens" / "notes.txt").write_text("mine")
    _refused(_dump_cli(tiny_data, tiny_teachers, only, "--overwrite"), only, "tokens/notes.txt")
    assert (only / "tokens" / "notes.txt").read_text() == "mine"
    cache = tmp_path / "cache.zarr"
    assert _dump_cli(tiny_data, tiny_teachers, cache).exit_code == 0
    (cache / "checksum" / "thesis.tex").write_text("mine")
    before = _objects(cache)
    _refused(_dump_cli(tiny_data, tiny_teachers, cache, "--overwrite"), cache, "checksum/thesis.tex")
    assert _objects(cache) == before
    empty = tmp_path / "drafts"
    (empty / "chapter1" / "figures").mkdir(parents=True)
    _refused(_dump_cli(tiny_data, tiny_teachers, empty, "--overwrite"), empty, "chapter1")
    assert (empty / "chapter1" / "figures").is_dir()


def test_overwrite_refuses_symbolic_links(tmp_path, tiny_data, tiny_teachers):
    """--out a link to a cache, and a cache holding a link named like one of its arrays: refused in one
    line, the cache (its root zarr.json too) and the linked folder kept."""
    cache = tmp_path / "cache.zarr"
    assert _dump_cli(tiny_data, tiny_teachers, cache).exit_code == 0
    before = _objects(cache)
    link = tmp_path / "latest"
    link.symlink_to(cache)
    _refused(_dump_cli(tiny_data, tiny_teachers, link, "--overwrite"), link, "symbolic link")
    assert _objects(cache) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (cache / "sample_weights").symlink_to(mine)
    _refused(_dump_cli(tiny_data, tiny_teachers, cache, "--overwrite"), cache, "sample_weights")
    assert _objects(cache) == before and (cache / "sample_weights").is_symlink()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_overwrite_replaces_a_cache_and_a_half_made_claim(where, tmp_path, request, tiny_data, tiny_teachers):
    """What --overwrite may replace: a finished cache (another config), a claim whose creation was cut
    short (root of kind "cache-creating", some metadata, zarr's temp file), a cache's arrays without
    their root; each time the result equals a fresh dump."""
    from logitcache.store.cache import CREATING, _with_kind
    from logitcache.store.backends import as_location

    base = request.getfixturevalue("s3") + "/x" if where == "s3" else str(tmp_path)
    fresh, out = f"{base}/fresh.zarr", f"{base}/out.zarr"
    assert _dump_cli(tiny_data, tiny_teachers, fresh).exit_code == 0
    assert _dump_cli(tiny_data, tiny_teachers, out, "--top-k", 8).exit_code == 0
    assert _dump_cli(tiny_data, tiny_teachers, out, "--overwrite").exit_code == 0
    assert _objects(out).keys() == _objects(fresh).keys()
    location = as_location(out)
    location.write_bytes("zarr.json", _with_kind(location.read_bytes("zarr.json"), CREATING))
    location.write_bytes("zarr.0123456789abcdef0123456789abcdef.partial", b"{")
    assert _dump_cli(tiny_data, tiny_teachers, out, "--overwrite").exit_code == 0
    assert _objects(out).keys() == _objects(fresh).keys()
    if where == "local":
        (tmp_path / "out.zarr" / "zarr.json").unlink()
    else:
        from zarr.core.sync import sync

        sync(location.zarr_store(read_only=False).delete("zarr.json"))
    assert _dump_cli(tiny_data, tiny_teachers, out, "--overwrite").exit_code == 0
    assert decoded_equal(fresh, out)


def decoded_equal(a, b) -> bool:
    ra, rb = open_cache(a), open_cache(b)
    x, y = ra.read(0, len(ra)).arrays(), rb.read(0, len(rb)).arrays()
    return len(ra) == len(rb) and x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
