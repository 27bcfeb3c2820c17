import math

import numpy as np
import pytest
import torch

from conftest import dump_config, tiny_train
from logitcache import open_cache
from logitcache.store import CacheReader
from logitcache.prepare import PrepareConfig, prepare
from logitcache.data.prepared import load_data
from logitcache.dump import dump
from logitcache.teachers.ensemble import Ensemble
from logitcache.errors import LogitcacheError
from logitcache.training.loader import CacheRows, emission_order
from logitcache.training.metrics import lm_metrics
from logitcache.runtime.device import DistEnv
from logitcache.teachers.models import build_model, get_preset, load_model
from logitcache.train_student import DistillObjective, OnlineObjective, StudentConfig, train_student
from logitcache.training.loop import read_metrics


def test_emission_order_is_a_new_permutation_each_epoch():
    a, b = emission_order(1000, 64, 200, seed=0, epoch=0), emission_order(1000, 64, 200, seed=0, epoch=1)
    assert sorted(a.tolist()) == list(range(1000)) and sorted(b.tolist()) == list(range(1000))
    assert not np.array_equal(a, b)
    assert np.array_equal(a, emission_order(1000, 64, 200, seed=0, epoch=0))


def test_loader_yields_every_row_once_and_resumes_exactly(tiny_cache):
    source = CacheRows(CacheReader(tiny_cache), seed=3, buffer_rows=12)
    batches = list(source.batches(0, 0, 8, DistEnv()))
    rows = np.concatenate([b["input_ids"].numpy() for b in batches])
    tokens = open_cache(tiny_cache).read(0, 40).tokens
    assert rows.shape == (40, 32)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, tokens.tolist()))
    tail = list(source.batches(0, 2, 8, DistEnv()))
    assert len(tail) == 3
    for x, y in zip(tail, batches[2:]):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_loader_ranks_split_each_global_batch(tiny_cache):
    source = CacheRows(CacheReader(tiny_cache), seed=1, buffer_rows=12)
    whole = list(source.batches(0, 0, 8, DistEnv()))
    halves = [list(source.batches(0, 0, 8, DistEnv(rank=r, world=2))) for r in (0, 1)]
    for full, a, b in zip(whole, *halves):
        merged = torch.cat([a["input_ids"], b["input_ids"]])
        assert sorted(map(tuple, merged.tolist())) == sorted(map(tuple, full["input_ids"].tolist()))


def test_baseline_reads_no_targets(tiny_cache):
    batch = next(CacheRows(CacheReader(tiny_cache), seed=0, targets=False).batches(0, 0, 8, DistEnv()))
    assert set(batch) == {"input_ids"}


def test_offline_loss_with_k_equal_vocab_equals_online_loss(tmp_path, tiny_data, tiny_teachers):
    cache = tmp_path / "full.zarr"
    dump(dump_config(tiny_data, tiny_teachers, cache, top_k=300, prob_dtype="float32", max_chunks=8))
    cached = open_cache(cache).read(0, 8)
    tokens, ids, probs = cached.tokens, cached.ids, cached.probs
    student = build_model(get_preset("llama-tiny"), 300, seed=5)
    batch = {"input_ids": torch.from_numpy(tokens), "topk_ids": torch.from_numpy(ids), "topk_probs": torch.from_numpy(probs)}
    ensemble = Ensemble([load_model(t) for t in tiny_teachers], "mean-logits", 2.0, torch.device("cpu"))
    for reduction in ("token", "paper"):
        offline, m_off = DistillObjective(0.5, 2.0, "bucket", reduction, "topk")(student, batch)
        online, m_on = OnlineObjective(ensemble, 0.5, reduction)(student, batch)
        assert torch.allclose(offline, online, atol=1e-5) and torch.allclose(m_off["kl"], m_on["kl"], atol=1e-5)


def test_student_trains_from_the_cache_and_logs_ce_and_kl(tmp_path, tiny_data, tiny_cache):
    out = tmp_path / "s"
    report = train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=out, preset="llama-tiny", alpha=0.5,
                                         shuffle_buffer=16, train=tiny_train(10)))
    records = [r for r in read_metrics(out) if "loss" in r]
    assert len(records) == 10 and all("ce" in r and "kl" in r for r in records)
    assert all(abs(r["loss"] - 0.5 * r["ce"] - 0.5 * r["kl"]) < 1e-4 for r in records)
    # learned something: below the uniform guess ln(V), and the saved best model scores what the run logged
    assert report.best_val_ce < math.log(300) - 0.5
    saved = load_model(out)
    val_rows = load_data(tiny_data).validation_rows("dev", 16)
    assert abs(lm_metrics(saved, val_rows, 8, torch.device("cpu"))["ce"] - report.best_val_ce) < 1e-4


def test_student_resume_matches_uninterrupted(tmp_path, tiny_data, tiny_cache):
    import logitcache.training.loop as T
    from transformers import AutoModelForCausalLM

    config = dict(cache=tiny_cache, data=tiny_data, preset="llama-tiny", alpha=0.5, shuffle_buffer=16,
                  train=tiny_train(10, checkpoint_every=3))
    train_student(StudentConfig(out=tmp_path / "full", **config))
    original = T.save_checkpoint

    def die_at_6(out, state):
        original(out, state)
        if state["step"] == 6:
            raise KeyboardInterrupt

    T.save_checkpoint = die_at_6
    try:
        with pytest.raises(KeyboardInterrupt):
            train_student(StudentConfig(out=tmp_path / "cut", **config))
    finally:
        T.save_checkpoint = original
    train_student(StudentConfig(out=tmp_path / "cut", **config), resume=True)
    a = AutoModelForCausalLM.from_pretrained(str(tmp_path / "full")).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(tmp_path / "cut")).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_cache_from_other_data_is_refused(tmp_path, tiny_raw, tiny_cache):
    other = tmp_path / "other"
    prepare(PrepareConfig(data=tiny_raw, out=other, vocab_size=290, seq_len=32))
    with pytest.raises(LogitcacheError, match="different tokenizer|other data"):
        train_student(StudentConfig(cache=tiny_cache, data=other, out=tmp_path / "s", preset="llama-tiny",
                                    train=tiny_train(2)))


def test_other_temperature_needs_retemper(tmp_path, tiny_data, tiny_cache):
    with pytest.raises(LogitcacheError, match="--retemper"):
        train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=tmp_path / "s", preset="llama-tiny",
                                    temperature=1.0, train=tiny_train(2)))
    report = train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=tmp_path / "s2", preset="llama-tiny",
                                         temperature=1.0, retemper=True, train=tiny_train(2)))
    assert report.steps == 2


def test_sampled_cache_trains(tmp_path, tiny_data, tiny_teachers):
    cache = tmp_path / "s.zarr"
    dump(dump_config(tiny_data, tiny_teachers, cache, targets="sample", samples=8, max_chunks=16))
    out = tmp_path / "st"
    train_student(StudentConfig(cache=cache, data=tiny_data, out=out, preset="llama-tiny", train=tiny_train(3)))
    assert all(np.isfinite(r["kl"]) for r in read_metrics(out) if "kl" in r)


def test_shared_normalizer_at_t1_gives_the_same_loss_and_gradient(tiny_cache):
    """The T = 1 fast path (one logsumexp for CE and KL) equals the general path."""
    cached = open_cache(tiny_cache).read(0, 4)
    tokens, ids, probs = cached.tokens, cached.ids, cached.probs
    batch = {"input_ids": torch.from_numpy(tokens), "topk_ids": torch.from_numpy(ids), "topk_probs": torch.from_numpy(probs)}
    grads = []
    for temperature in (1.0, 1.0 + 1e-12):  # the second takes the general path, numerically T = 1
        student = build_model(get_preset("llama-tiny"), 300, seed=3)
        loss, _ = DistillObjective(0.5, temperature, "bucket", "token", "topk")(student, batch)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in student.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[0][1], grads[1][1]))


def test_saved_config_holds_the_resolved_temperature(tmp_path, tiny_data, tiny_cache):
    import json

    out = tmp_path / "s"
    train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=out, preset="llama-tiny", train=tiny_train(2)))
    saved = json.loads((out / "logitcache_config.json").read_text())
    assert saved["temperature"] == open_cache(tiny_cache).attrs["temperature"] == 2.0
    assert saved["world_size"] == 1


def test_cache_of_the_dev_split_is_refused_unless_asked(tmp_path, tiny_data, tiny_teachers):
    cache = tmp_path / "dev.zarr"
    dump(dump_config(tiny_data, tiny_teachers, cache, split="dev", max_chunks=16))
    config = dict(cache=cache, data=tiny_data, preset="llama-tiny", train=tiny_train(2))
    with pytest.raises(LogitcacheError, match="'dev' split.*--allow-eval-split"):
        train_student(StudentConfig(out=tmp_path / "s", **config))
    report = train_student(StudentConfig(out=tmp_path / "s2", allow_eval_split=True, **config))
    assert report.steps == 2


def test_bad_blocks_with_grad_accum_skip_whole_steps_never_nan(tmp_path, tiny_data, tiny_cache, copy_of):
    """Bad blocks leave batches with fewer rows than micro-batches: such steps are skipped (counted), the
    others train; no loss or weight becomes NaN from an empty micro-batch."""
    from logitcache.store import block_chunk_path

    cache = copy_of(tiny_cache)
    for block in (0, 1, 2):
        block_chunk_path(cache, "topk_probs", block).unlink()
    out = tmp_path / "s"
    report = train_student(StudentConfig(cache=cache, data=tiny_data, out=out, preset="llama-tiny", shuffle_buffer=40,
                                         skip_bad_blocks=True, train=tiny_train(10, batch_size=8, grad_accum=4)))
    records = [r for r in read_metrics(out) if "lr" in r]
    skipped = [r for r in records if r.get("skipped")]
    trained = [r for r in records if "loss" in r]
    assert report.skipped_steps == len(skipped) > 0 and len(trained) > 0
    assert len(skipped) + len(trained) == 10
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["ce"]) for r in trained)
    assert all(torch.isfinite(p).all() for p in load_model(out).parameters())
    assert sorted(report.skipped_blocks) == [0, 1, 2]


def test_tail_renormalize_on_sampled_targets_renormalises_over_the_drawn_ids():
    """DistillObjective with --tail renormalize on a sampled batch: the KL is the teacher's and the
    student's distributions renormalised over each position's drawn ids (computed here per position),
    and differs from the default importance-weighted estimate."""
    from logitcache.teachers.targets import sample_targets

    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 300, (2, 32), generator=g)
    p = torch.softmax(torch.randn(2, 32, 300, generator=g) * 3, -1)
    ids, probs, weights = sample_targets(p, 8, 1.0, g)
    batch = {"input_ids": tokens, "topk_ids": ids, "topk_probs": probs, "sample_weights": weights}
    student = build_model(get_preset("llama-tiny"), 300, seed=1)
    with torch.no_grad():
        q = torch.softmax(student(input_ids=tokens).logits.float() / 2.0, -1)  # (B, T, V)
        _, renorm = DistillObjective(0.5, 2.0, "renormalize", "token", "sample")(student, batch)
        _, weighted = DistillObjective(0.5, 2.0, "bucket", "token", "sample")(student, batch)
    direct = []
    for b in range(2):
        for t in range(32):
            drawn = weights[b, t] > 0
            pn = probs[b, t][drawn] / probs[b, t][drawn].sum()
            qn = q[b, t][ids[b, t][drawn]] / q[b, t][ids[b, t][drawn]].sum()
            direct.append(float((pn * (pn.log() - qn.log())).sum()))
    assert renorm["kl"].item() == pytest.approx(4.0 * np.mean(direct), rel=1e-4)
    assert abs(renorm["kl"].item() - weighted["kl"].item()) > 0.1


def test_online_teacher_at_another_temperature_needs_no_retemper(tmp_path, tiny_data, tiny_cache, tiny_teachers,
                                                                 monkeypatch):
    """--online-teacher computes the teachers' distribution at any T exactly: a T other than the cache's
    trains without --retemper, and the ensemble runs at that T."""
    import json

    from logitcache import train_student as student_module

    temperatures = []

    class Recording(Ensemble):
        def __init__(self, models, combine, temperature, *args, **kwargs):
            temperatures.append(temperature)
            super().__init__(models, combine, temperature, *args, **kwargs)

    monkeypatch.setattr(student_module, "Ensemble", Recording)
    out = tmp_path / "s"
    report = train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=out, preset="llama-tiny", temperature=1.0,
                                         online_teachers=tiny_teachers, train=tiny_train(2)))
    assert report.steps == 2 and temperatures == [1.0]
    assert json.loads((out / "logitcache_config.json").read_text())["temperature"] == 1.0
