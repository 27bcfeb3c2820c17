"""Caches with teacher_count downstream: the losses mask positions no teacher aligned (CE only there), the
loader carries the count on every path, and train-student, eval, bench, verify, copy and inspect take such
caches. The cache comes from a real dump with a teacher on a tokenizer of its own (Metaspace BPE with byte
fallback), so some positions have no teacher."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from logitcache.training.losses import fused_distill_loss, sampled_kl, sampled_renormalized_kl, sparse_kl


# --- the losses against a plain loop -------------------------------------------------------------------------------

def masked_targets(b=3, t=6, v=40, k=7, seed=11):
    """Logits, top-k targets as a mixed dump writes them (ids 0..K-1 with p = 0 where no teacher is aligned),
    tokens and the count (B, T) with both covered and uncovered positions (and one row with none covered)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    probs, ids = torch.softmax(torch.randn(b, t, v, generator=g) * 2, -1).topk(k, -1)
    tokens = torch.randint(0, v, (b, t), generator=g)
    count = torch.randint(0, 3, (b, t), generator=g).to(torch.uint8)
    count[0] = 0  # a row without a single aligned position
    count[1, 0] = 1
    none = (count == 0).unsqueeze(-1)
    ids = torch.where(none, torch.arange(k).expand_as(ids), ids)
    probs = torch.where(none, torch.zeros_like(probs), probs)
    return logits, ids, probs, tokens, count


def loop_loss(logits, ids, probs, tokens, count, temperature, alpha, reduction):
    """alpha * CE + (1 - alpha) * T^2 * KL, one position at a time: CE at every position that predicts a
    token (all of them, covered or not), KL (top-k + tail bucket) only where count > 0, averaged over those
    positions (token) or summed and divided by the rows (paper)."""
    b, t, _ = logits.shape
    ce_terms, kl_terms = [], []
    for i in range(b):
        for j in range(t):
            log_q1 = torch.log_softmax(logits[i, j], -1)
            if j < t - 1:
                ce_terms.append(-log_q1[tokens[i, j + 1]])
            if int(count[i, j]) == 0:
                continue
            q = torch.softmax(logits[i, j] / temperature, -1)
            kl = logits.new_zeros(())
            for slot in range(ids.shape[-1]):
                p = probs[i, j, slot]
                if p > 0:
                    kl = kl + p * (torch.log(p) - torch.log(q[ids[i, j, slot]]))
            p_tail = 1 - probs[i, j].sum()
            q_tail = 1 - q[ids[i, j]].sum()
            if p_tail > 0:
                kl = kl + p_tail * (torch.log(p_tail) - torch.log(q_tail))
            kl_terms.append(kl)
    ce = torch.stack(ce_terms).mean()
    kl_sum = torch.stack(kl_terms).sum() if kl_terms else logits.new_zeros(())
    kl = temperature**2 * kl_sum / (b if reduction == "paper" else max(len(kl_terms), 1))
    return alpha * ce + (1 - alpha) * kl, kl, ce


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
@pytest.mark.parametrize("reduction", ["token", "paper"])
@pytest.mark.parametrize("alpha", [0.5, 0.0])
def test_fused_loss_masks_uncovered_positions_like_a_plain_loop(temperature, reduction, alpha):
    logits, ids, probs, tokens, count = masked_targets()
    ref = logits.clone().double().requires_grad_(True)
    ref_loss, ref_kl, ref_ce = loop_loss(ref, ids, probs.double(), tokens, count, temperature, alpha, reduction)
    ref_loss.backward()
    fused = logits.clone().requires_grad_(True)
    loss, kl, ce = fused_distill_loss(fused, ids, probs, tokens, temperature, alpha, reduction, count > 0)
    loss.backward()
    assert torch.allclose(kl.double(), ref_kl.detach(), atol=1e-5), (kl, ref_kl)
    assert torch.allclose(ce.double(), ref_ce.detach(), atol=1e-5)
    assert torch.allclose(loss.double(), ref_loss.detach(), atol=1e-5)
    assert torch.allclose(fused.grad.double(), ref.grad, atol=1e-6)
    # the autograd path (sparse_kl with the mask) is the same loss
    auto_kl = sparse_kl(logits, ids, probs, temperature, "bucket", reduction, count > 0)
    assert torch.allclose(auto_kl.double(), ref_kl.detach(), atol=1e-5)


def test_a_row_with_no_teacher_trains_with_ce_only():
    """Row 0 has no aligned position: its gradient is exactly the CE term's, alpha * d CE / d logits."""
    from logitcache.training.loop import next_token_ce

    logits, ids, probs, tokens, count = masked_targets()
    fused = logits.clone().requires_grad_(True)
    loss, _, _ = fused_distill_loss(fused, ids, probs, tokens, 2.0, 0.5, "token", count > 0)
    loss.backward()
    ce_only = logits.clone().requires_grad_(True)
    (0.5 * next_token_ce(ce_only, tokens)).backward()
    assert torch.allclose(fused.grad[0], ce_only.grad[0], atol=1e-7)
    assert not torch.allclose(fused.grad[1], ce_only.grad[1], atol=1e-4)  # row 1 has teacher targets


def test_with_every_position_covered_the_mask_changes_nothing():
    logits, ids, probs, tokens, _ = masked_targets()
    probs, ids = torch.softmax(torch.randn(3, 6, 40), -1).topk(7, -1)
    a = fused_distill_loss(logits.clone(), ids, probs, tokens, 2.0, 0.5, "token", None)
    b = fused_distill_loss(logits.clone(), ids, probs, tokens, 2.0, 0.5, "token", torch.ones(3, 6))
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))


@pytest.mark.parametrize("reduction", ["token", "paper"])
def test_sampled_losses_mask_uncovered_positions_like_a_plain_loop(reduction):
    g = torch.Generator().manual_seed(5)
    b, t, v, w = 3, 5, 30, 6
    logits = torch.randn(b, t, v, generator=g) * 2
    ids = torch.stack([torch.randperm(v, generator=g)[:w] for _ in range(b * t)]).reshape(b, t, w)
    p = torch.rand(b, t, w, generator=g) * 0.15
    weights = torch.rand(b, t, w, generator=g)
    weights[..., -1] = 0  # a padding slot
    count = torch.randint(0, 2, (b, t), generator=g)
    count[0, 0] = 1
    keep = (count > 0).unsqueeze(-1)
    ids, p, weights = ids * keep, p * keep, weights * keep  # the dump zeros every slot where no teacher aligns
    temperature = 2.0
    est_terms, renorm_terms = [], []
    for i in range(b):
        for j in range(t):
            if count[i, j] == 0:
                continue
            log_s = torch.log_softmax(logits[i, j] / temperature, -1)
            drawn = [s for s in range(w) if weights[i, j, s] > 0]
            est_terms.append(sum(float(weights[i, j, s]) * (math.log(float(p[i, j, s])) - float(log_s[ids[i, j, s]]))
                                 for s in drawn))
            mass = sum(float(p[i, j, s]) for s in drawn)
            kept = torch.stack([logits[i, j, ids[i, j, s]] / temperature for s in drawn])
            log_q = torch.log_softmax(kept, -1)
            renorm_terms.append(sum(float(p[i, j, s]) / mass * (math.log(float(p[i, j, s]) / mass) - float(log_q[n]))
                                    for n, s in enumerate(drawn)))
    denominator = b if reduction == "paper" else len(est_terms)
    mask = count > 0
    est = sampled_kl(logits, ids, p, weights, temperature, reduction, mask)
    renorm = sampled_renormalized_kl(logits, ids, p, weights, temperature, reduction, mask)
    assert est.item() == pytest.approx(temperature**2 * sum(est_terms) / denominator, abs=1e-5)
    assert renorm.item() == pytest.approx(temperature**2 * sum(renorm_terms) / denominator, abs=1e-5)


# --- a real cache with teacher_count -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """{data, teacher, cache, sampled}: the odd corpus (unicode, tabs, runs of spaces), one tiny teacher with a
    Metaspace BPE of its own (so positions it does not align have teacher_count 0), top-k and sampled caches."""
    from conftest import dump_config
    from logitcache.prepare import PrepareConfig, prepare
    from logitcache.dump import dump
    from test_cross_tokenizer import odd_corpus, teacher_folder, teacher_metaspace

    root = tmp_path_factory.mktemp("mixed-downstream")
    data = root / "data"
    prepare(PrepareConfig(data=odd_corpus(root / "raw"), out=data, vocab_size=300, seq_len=32))
    teacher = teacher_folder(root, "llama-metaspace", teacher_metaspace(), "llama", 2)
    settings = dict(combine="mean-probs", max_chunks=48, min_coverage=0.2, temperature=1.0)
    cache, sampled = root / "cache.zarr", root / "sampled.zarr"
    dump(dump_config(data, [teacher], cache, **settings))
    dump(dump_config(data, [teacher], sampled, targets="sample", samples=8, **settings))
    return {"data": data, "teacher": teacher, "cache": cache, "sampled": sampled, "root": root}


def counts_by_tokens(reader) -> dict[bytes, np.ndarray]:
    tokens = reader.read(0, len(reader)).tokens
    counts = reader.read(0, len(reader)).teacher_count
    return {row.tobytes(): count for row, count in zip(tokens, counts)}


def test_the_cache_has_covered_and_uncovered_positions(mixed):
    from logitcache import open_cache

    counts = open_cache(mixed["cache"]).read(0, 48).teacher_count
    assert (counts == 0).any() and (counts == 1).any() and set(np.unique(counts).tolist()) <= {0, 1}


@pytest.mark.parametrize("which", ["cache", "sampled"])
@pytest.mark.parametrize("world", [1, 2])
def test_every_batch_carries_each_rows_teacher_count(mixed, which, world):
    """Each row a rank receives comes with its own row's count from the cache (matched by its tokens), on one
    rank and on two ranks splitting each global batch; the CE-only baseline reads no count."""
    from logitcache.runtime.device import DistEnv
    from logitcache.training.loader import CacheRows
    from logitcache.store import CacheReader

    reader = CacheReader(mixed[which])
    expected = counts_by_tokens(reader)
    source = CacheRows(reader, seed=1, buffer_rows=12)
    seen = 0
    for rank in range(world):
        for batch in source.batches(0, 0, 8, DistEnv(rank=rank, world=world)):
            assert batch["teacher_count"].dtype == torch.uint8
            assert list(batch) == ["input_ids", "topk_ids", "topk_probs"] + ["sample_weights"] * (which == "sampled") \
                + ["teacher_count"]
            for tokens, count in zip(batch["input_ids"].numpy(), batch["teacher_count"].numpy()):
                assert np.array_equal(count, expected[tokens.astype(reader.read(0, 1).tokens.dtype).tobytes()])
                seen += 1
    assert seen == len(reader) // 8 * 8
    baseline = next(CacheRows(reader, seed=1, targets=False).batches(0, 0, 8, DistEnv()))
    assert list(baseline) == ["input_ids"]


def test_the_objective_masks_what_the_loader_carries(mixed):
    """DistillObjective on a loader batch (through the trainer's move to the device) equals the plain loop
    with that batch's counts; the same batch without its count gives a different (unmasked) loss."""
    from logitcache.data.prepared import load_data
    from logitcache.runtime.device import DistEnv
    from logitcache.training.loader import CacheRows
    from logitcache.teachers.models import build_model, get_preset
    from logitcache.store import CacheReader
    from logitcache.train_student import DistillObjective

    data = load_data(mixed["data"])
    batch = next(CacheRows(CacheReader(mixed["cache"]), seed=0).batches(0, 0, 8, DistEnv()))
    batch = {k: v.to("cpu") for k, v in batch.items()}
    model = build_model(get_preset("llama-tiny"), data.vocab_size, seed=0, specials=data.special_ids)
    objective = DistillObjective(0.5, 1.0, "bucket", "token", "topk")
    loss, metrics = objective(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits.double()
    ref, ref_kl, _ = loop_loss(logits, batch["topk_ids"], batch["topk_probs"].double(), batch["input_ids"],
                               batch["teacher_count"], 1.0, 0.5, "token")
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5) and metrics["kl"].item() == pytest.approx(ref_kl.item(), abs=1e-5)
    unmasked, _ = objective(model, {k: v for k, v in batch.items() if k != "teacher_count"})
    assert (batch["teacher_count"] == 0).any() and abs(unmasked.item() - loss.item()) > 1e-4


@pytest.mark.parametrize("which", ["cache", "sampled"])
def test_train_student_on_a_counted_cache(tmp_path, mixed, which):
    from conftest import tiny_train
    from logitcache.train_student import StudentConfig, train_student
    from logitcache.training.loop import read_metrics

    out = tmp_path / "student"
    train_student(StudentConfig(cache=mixed[which], data=mixed["data"], out=out, preset="llama-tiny",
                                train=tiny_train(6)))
    records = [r for r in read_metrics(out) if "kl" in r]
    assert records and all(math.isfinite(r["kl"]) for r in records)
    if which == "cache":  # the top-k KL is a KL; the sampled one an unbiased estimate, of either sign
        assert all(r["kl"] >= -1e-4 for r in records)


# --- eval --teacher with a teacher on a tokenizer of its own --------------------------------------------------------

@pytest.fixture(scope="module")
def student_dir(mixed):
    """A random-init student on the data's tokenizer, saved as eval loads models."""
    import shutil

    from logitcache.data.prepared import load_data
    from logitcache.teachers.models import build_model, get_preset

    data = load_data(mixed["data"])
    out = mixed["root"] / "student"
    build_model(get_preset("llama-tiny"), data.vocab_size, seed=4, specials=data.special_ids).save_pretrained(out)
    shutil.copy(mixed["data"] / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_eval_against_a_teacher_on_its_own_tokenizer_equals_its_cache(tmp_path, mixed, student_dir, temperature):
    """eval --teacher (Metaspace teacher, dev split) against a float32 top-k = V dump of the same teacher over the
    same chunks (that cache is checked against a plain-loop reference in test_cross_tokenizer): KL over the
    covered positions (the data's ids plus the unmapped-mass bucket), top-1 agreement, coverage."""
    from conftest import dump_config
    from logitcache import open_cache
    from logitcache.dump import dump
    from logitcache.evaluate import EvalConfig, evaluate
    from logitcache.teachers.models import load_model

    n = 12
    cache = tmp_path / "dev.zarr"
    dump(dump_config(mixed["data"], [mixed["teacher"]], cache, split="dev", max_chunks=n, top_k=300,
                     prob_dtype="float32", combine="mean-probs", min_coverage=0.2, temperature=temperature))
    reader = open_cache(cache)
    cached = reader.read(0, n)
    tokens, ids, probs = cached.tokens, cached.ids, cached.probs
    count = reader.read(0, n).teacher_count
    dense = np.zeros((n, tokens.shape[1], 300), np.float64)
    np.put_along_axis(dense, ids, probs.astype(np.float64), -1)
    with torch.no_grad():
        logits = load_model(student_dir)(input_ids=torch.from_numpy(tokens)).logits.double().numpy()
    kls, agree = [], []
    for i, j in zip(*np.nonzero(count)):
        z = logits[i, j] / temperature
        log_q = z - np.log(np.exp(z - z.max()).sum()) - z.max()
        p = dense[i, j]
        reached = p > 0
        u = 1 - p.sum()
        kl = float((p[reached] * (np.log(p[reached]) - log_q[reached])).sum())
        if u > 1e-6:
            kl += u * (math.log(u) - math.log(np.exp(log_q[~reached]).sum()))
        kls.append(kl)
        agree.append(int(np.argmax(logits[i, j]) == np.argmax(p)))
    result = evaluate(EvalConfig(models=(student_dir,), data=mixed["data"], split="dev", max_chunks=n, device="cpu",
                                 teachers=(mixed["teacher"],), combine="mean-probs", temperature=temperature))
    entry = result["models"][0]
    assert entry["teacher_kl"] == pytest.approx(np.mean(kls), rel=1e-4)
    assert entry["teacher_top1_agreement"] == pytest.approx(np.mean(agree), abs=1e-9)
    assert entry["teacher_positions_covered"] == pytest.approx((count > 0).mean(), abs=1e-9)
    assert 0 < entry["teacher_positions_covered"] < 1
    [coverage] = entry["teacher_coverage"]
    assert coverage["teacher"] == "llama-metaspace" and coverage["positions"] == pytest.approx((count > 0).mean())
    covered_mass = dense.sum(-1)[count > 0]
    assert coverage["mass"] == pytest.approx(covered_mass.mean(), abs=1e-4) and coverage["mass"] < 1


def test_eval_with_a_teacher_on_its_own_tokenizer_needs_mean_probs(mixed, student_dir):
    from logitcache.errors import LogitcacheError
    from logitcache.evaluate import EvalConfig, evaluate

    with pytest.raises(LogitcacheError, match="use --combine mean-probs"):
        evaluate(EvalConfig(models=(student_dir,), data=mixed["data"], max_chunks=4, device="cpu",
                            teachers=(mixed["teacher"],)))


def test_eval_cli_prints_coverage(mixed, student_dir):
    import json

    from typer.testing import CliRunner

    from logitcache_cli.app import app

    result = CliRunner().invoke(app, ["eval", str(student_dir), "--data", str(mixed["data"]), "--max-chunks", "4",
                                      "--device", "cpu", "--teacher", str(mixed["teacher"]), "--combine", "mean-probs",
                                      "--json", "-"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["models"][0]
    assert 0 < entry["teacher_positions_covered"] < 1 and "teacher coverage" in result.stderr and "llama-metaspace" in result.stderr
    refused = CliRunner().invoke(app, ["eval", str(student_dir), "--data", str(mixed["data"]), "--max-chunks", "4",
                                       "--device", "cpu", "--teacher", str(mixed["teacher"])])
    assert refused.exit_code == 2 and "use --combine mean-probs" in refused.output and "Traceback" not in refused.output


def test_the_report_shows_kl_for_the_models_that_have_it():
    """A mixed run: the teacher on its own tokenizer has no KL to the teachers, the others do; the KL columns stay
    and that teacher's cells read '-'."""
    from logitcache.report import markdown

    def model(ce, kl=None):
        m = {"params": 1e6, "dev_ce": ce, "dev_ppl": math.exp(ce), "test_ce": ce + 0.01, "test_ppl": math.exp(ce),
             "dev_bits_per_byte": 1.5}
        return m | ({"dev_teacher_kl": kl, "dev_teacher_top1_agreement": 0.25} if kl is not None else {})

    student = lambda ce, kl: model(ce, kl) | {"seeds": [{"name": "x (seed0)"} | model(ce, kl)]}  # noqa: E731
    report = {"teachers": [model(5.0, 0.0) | {"name": "llama"}, model(5.2) | {"name": "gpt2"}],
              "students": {"distilled": student(5.5, 0.4321), "baseline": student(5.6, 0.9876)},
              "cache": {"k": 32, "temperature": 1.0, "prob_dtype": "sqrt-u7", "bytes_per_token": 20.0,
                        "full_logit_bytes_per_token": 32000.0, "bytes_on_disk": 1e6, "full_logit_bytes": 1e9},
              "distillation_gain_dev_ce": 0.1, "stages": {}, "stages_ran": [], "stages_reused": [], "plots": []}
    text = markdown(report)
    assert "dev KL to teachers" in text and "0.4321" in text and "0.9876" in text
    gpt2_row = next(line for line in text.splitlines() if line.startswith("| teacher gpt2"))
    assert gpt2_row.rstrip(" |").endswith("- | -")


# --- bench cache-size, verify, copy, inspect --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def byte_level_teacher(mixed):
    """A tiny GPT-2 with a byte-level BPE smaller than the data's (280 ids against 300): its finer tokens align
    with enough positions for dump's default --min-coverage (bench cache-size dumps with the defaults)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from test_cross_tokenizer import TRAIN_TEXT, teacher_folder

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(TRAIN_TEXT, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return teacher_folder(mixed["root"], "gpt2-bytes", tokenizer, "gpt2", 1)


def test_bench_cache_size_with_a_teacher_on_its_own_tokenizer(tmp_path, mixed, byte_level_teacher):
    """k = V float32 keeps everything (KL 0 up to rounding, agreement 1); the mass kept at k = 4 is the top-4 mass
    of that full cache at the covered positions, computed here with numpy; coverage is in the payload."""
    from logitcache import open_cache
    from logitcache.bench import cache_size
    from logitcache.config import CacheSizeConfig

    n = 16
    payload = cache_size(CacheSizeConfig(data=mixed["data"], teachers=(byte_level_teacher,), out=tmp_path, ks=(4, 300),
                                         prob_dtypes=("float32",), chunks=n, temperature=1.0, combine="mean-probs"))
    small, full = payload["rows"]
    assert full["kl"] < 1e-4 and full["top1_agreement"] == 1.0
    reader = open_cache(tmp_path / "caches" / "topk300-float32.zarr")
    probs = reader.read(0, n).probs
    covered = reader.read(0, n).teacher_count > 0
    assert small["positions_covered"] == pytest.approx(covered.mean()) and 0 < covered.mean() < 1
    assert full["mass_kept"] == pytest.approx(probs.sum(-1)[covered].mean(), abs=1e-5) and full["mass_kept"] < 1
    top4 = -np.sort(-probs, axis=-1)[..., :4].sum(-1)
    assert small["mass_kept"] == pytest.approx(top4[covered].mean(), abs=1e-5)
    assert small["kl"] > full["kl"] + 1e-3
    [entry] = payload["coverage"]
    assert entry["teacher"] == "gpt2-bytes" and entry["positions"] > 0.5
    assert "gpt2-bytes (a tokenizer of its own)" in (tmp_path / "cache_size.md").read_text()


def test_verify_copy_and_inspect_take_a_counted_cache(tmp_path, mixed):
    """verify checks teacher_count with the rest of each block (a flipped byte in it is found), copy carries it
    object for object, inspect shows the coverage."""
    import json
    import shutil

    from typer.testing import CliRunner

    from logitcache import open_cache
    from logitcache.store import block_chunk_path, verify_cache
    from logitcache_cli.app import app

    cli = CliRunner()
    cache = mixed["cache"]
    copied = tmp_path / "copied.zarr"
    result = cli.invoke(app, ["copy", str(cache), str(copied)])
    assert result.exit_code == 0, result.output
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(copied) == files(cache) and any(str(p).startswith("teacher_count") for p in files(copied))
    assert np.array_equal(open_cache(copied).read(0, 48).teacher_count, open_cache(cache).read(0, 48).teacher_count)
    assert verify_cache(copied) == []
    assert cli.invoke(app, ["verify", str(copied)]).exit_code == 0
    result = cli.invoke(app, ["inspect", str(copied), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["attrs"]["with_teacher_count"] and "coverage llama-metaspace" in result.stderr
    broken = tmp_path / "broken.zarr"
    shutil.copytree(cache, broken)
    chunk = block_chunk_path(broken, "teacher_count", 1)
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    assert [p.split(":")[0] for p in verify_cache(broken)] == ["block 1"]
    assert cli.invoke(app, ["verify", str(broken)]).exit_code == 1


# --- the loader's other paths: object storage, torchrun -------------------------------------------------------------

def test_batches_from_a_bucket_carry_the_same_teacher_count(s3, mixed):
    """The counted cache copied to S3 (moto): CacheRows over the URL yields the batches it yields from disk,
    teacher_count included."""
    from typer.testing import CliRunner

    from logitcache.runtime.device import DistEnv
    from logitcache.training.loader import CacheRows
    from logitcache.store import CacheReader
    from logitcache_cli.app import app

    url = f"{s3}/mixed/cache.zarr"
    assert CliRunner().invoke(app, ["copy", str(mixed["cache"]), url]).exit_code == 0
    remote = list(CacheRows(CacheReader(url), seed=2, buffer_rows=16, workers=4).batches(0, 0, 8, DistEnv()))
    local = list(CacheRows(CacheReader(mixed["cache"]), seed=2, buffer_rows=16).batches(0, 0, 8, DistEnv()))
    assert len(remote) == len(local) > 0
    for a, b in zip(remote, local):
        assert list(a) == list(b) and "teacher_count" in a
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_ranks_train_on_a_counted_cache(tmp_path, mixed):
    """Two ranks (gloo on CPU) split each batch, each masking its own rows' uncovered positions."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "s"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "logitcache_cli", "train-student", "--cache", str(mixed["cache"]), "--data", str(mixed["data"]),
               "--out", str(out), "--preset", "llama-tiny", "--max-steps", "4", "--batch-size", "8", "--lr", "3e-3",
               "--warmup-steps", "1", "--val-chunks", "8", "--device", "cpu"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "kl" in r]
    assert len(steps) == 4 and all(math.isfinite(r["kl"]) and r["kl"] > 0 for r in steps)


TORCHRUN_DUMP = """
import json, sys
from pathlib import Path
from logitcache.dump import dump
from logitcache.config import DumpConfig
data, teacher, out = map(Path, sys.argv[1:4])
report = dump(DumpConfig(data=data, teachers=(teacher,), out=out, top_k=8, temperature=1.0, block_rows=8, batch_size=4,
                         max_chunks=48, device="cpu", combine="mean-probs", min_coverage=0.2))
if report.rank == 0:
    print("REPORT " + json.dumps({"coverage": report.coverage, "tokens": report.tokens}))
"""


def test_torchrun_dump_reports_the_coverage_of_every_ranks_blocks(tmp_path, mixed):
    """Two ranks each compute half the blocks; the coverage rank 0 reports counts both halves: it equals one
    process's over the same blocks, and the cache equals that process's stored object for stored object."""
    import json
    import os
    import subprocess
    import sys

    from logitcache.dump import dump
    from conftest import dump_config

    single = dump(dump_config(mixed["data"], [mixed["teacher"]], tmp_path / "one.zarr", combine="mean-probs",
                              max_chunks=48, min_coverage=0.2, temperature=1.0))
    script = tmp_path / "dump.py"
    script.write_text(TORCHRUN_DUMP)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
               str(mixed["data"]), str(mixed["teacher"]), str(tmp_path / "two.zarr")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("REPORT "))[7:])
    assert report["tokens"] == single.tokens
    assert len(report["coverage"]) == len(single.coverage) == 1
    assert report["coverage"][0]["positions"] == single.coverage[0]["positions"]  # counts: exact
    assert report["coverage"][0]["mass"] == pytest.approx(single.coverage[0]["mass"], rel=1e-6)  # float sums, reordered
    assert single.coverage[0]["positions"] < 1  # some positions unaligned: a rank's share would differ
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    chunks = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                           if p.is_file() and "/c/" in str(p.relative_to(root))}
    assert chunks(one) == chunks(two)


@pytest.mark.parametrize("fault", ["count above teachers", "target where none aligned"])
def test_verify_checks_teacher_count_against_the_teachers_and_the_targets(tmp_path, mixed, fault):
    """Under a valid checksum (rewritten with the block): a count above the cache's teachers, or a count
    of 0 where the block holds probabilities, is reported by verify; the sound cache passes."""
    import shutil

    from logitcache.store import CacheStore, verify_cache
    from logitcache.store.cache import block_checksum

    broken = tmp_path / "broken.zarr"
    shutil.copytree(mixed["cache"], broken)
    assert verify_cache(broken) == []
    store = CacheStore(broken, mode="r+")
    stored = store.read_checked_block(1)
    at = store.layout.block_arrays.index("teacher_count")
    count = stored[at].copy()
    n_teachers = len(store.attrs["teachers"])
    if fault == "count above teachers":
        count[0, 0] = n_teachers + 1
        expected = f"block 1: a teacher_count of {n_teachers + 1}, above the cache's {n_teachers} teachers"
    else:
        covered = np.argwhere(count > 0)[0]
        count[tuple(covered)] = 0
        expected = "block 1: probability stored at a position no teacher aligned (teacher_count 0)"
    stored[at] = count
    store.write_stored_block(1, stored, block_checksum(stored))
    assert verify_cache(broken) == [expected]
