import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.bench import CacheSizeConfig, cache_size
from logitcache.evaluate import EvalConfig, blimp_accuracy, evaluate, load_blimp, sentence_logprobs
from logitcache.metrics import token_byte_lengths
from logitcache.models import load_model
from logitcache.tokenizer import BOS_ID, load_tokenizer

SHARED_BLIMP = Path(os.environ.get("LOGITCACHE_BLIMP_DIR", Path(__file__).resolve().parents[2] / "shared" / "blimp"))


def blimp_dir(tmp_path: Path) -> Path:
    """The real BLiMP files when this machine has them (two paradigms, 20 pairs each), else a synthetic pair set."""
    out = tmp_path / "blimp"
    out.mkdir()
    real = sorted(SHARED_BLIMP.glob("*.jsonl"))[:2] if SHARED_BLIMP.is_dir() else []
    if real:
        for path in real:
            (out / path.name).write_text("\n".join(path.read_text().splitlines()[:20]) + "\n")
    else:
        records = [{"sentence_good": "The cat sees a dog.", "sentence_bad": "The cat see a dog.", "UID": "agreement",
                    "linguistics_term": "s-v_agreement"}] * 5
        (out / "agreement.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def test_blimp_score_is_the_hand_summed_log_prob(tiny_data, tiny_teachers):
    model = load_model(tiny_teachers[0])
    tokenizer = load_tokenizer(tiny_data / "tokenizer.json")
    sentences = ["The cat sees a dog.", "A bird holds the ball!"]
    scores = sentence_logprobs(model, tokenizer, sentences, torch.device("cpu"))
    for sentence, score in zip(sentences, scores):
        ids = [BOS_ID] + tokenizer.encode(sentence, add_special_tokens=False).ids
        by_hand = 0.0
        for i in range(1, len(ids)):  # one forward per prefix: no batching, no padding
            with torch.no_grad():
                logits = model(torch.tensor([ids[:i]])).logits[0, -1]
            by_hand += float(torch.log_softmax(logits.double(), -1)[ids[i]])
        assert math.isclose(score, by_hand, rel_tol=1e-4, abs_tol=1e-4)


def test_a_tie_is_a_miss_strictly_and_a_hit_officially(tiny_data, tiny_teachers):
    model = load_model(tiny_teachers[0])
    tokenizer = load_tokenizer(tiny_data / "tokenizer.json")
    same = [{"sentence_good": "The cat sees a dog.", "sentence_bad": "The cat sees a dog.", "linguistics_term": "t"}]
    result = blimp_accuracy(model, tokenizer, {"ties": same * 3}, torch.device("cpu"))
    assert result["strict"] == 0.0 and result["by_paradigm"]["ties"]["strict"] == 0.0 and result["categories"]["t"]["strict"] == 0.0
    # the BabyLM pipeline's convention: a tie goes to the good sentence
    assert result["official"] == 1.0 and result["categories"]["t"]["official"] == 1.0


def test_eval_json_has_every_field(tmp_path, tiny_data, tiny_teachers):
    blimp = blimp_dir(tmp_path)
    result = evaluate(EvalConfig(models=tiny_teachers, data=tiny_data, split="dev", blimp=blimp, teachers=tiny_teachers,
                                 device="cpu"))
    assert len(result["models"]) == 2
    n_paradigms = len(load_blimp(blimp))
    for m in result["models"]:
        assert set(m) >= {"path", "params", "ce", "ppl", "split", "bits_per_byte", "blimp", "teacher_top1_agreement",
                          "teacher_kl"}
        assert math.isclose(m["ppl"], math.exp(m["ce"]), rel_tol=1e-9)
        assert 0 <= m["blimp"]["strict"] <= m["blimp"]["official"] <= 1 and len(m["blimp"]["paradigms"]) == n_paradigms
        assert all(0 <= v["strict"] <= v["official"] <= 1 for v in m["blimp"]["categories"].values())
        paradigms = m["blimp"]["by_paradigm"]  # the macro averages are the means of the per-paradigm scores
        assert m["blimp"]["paradigms"] == {u: p["strict"] for u, p in paradigms.items()}
        assert math.isclose(m["blimp"]["strict"], np.mean([p["strict"] for p in paradigms.values()]))
        assert math.isclose(m["blimp"]["official"], np.mean([p["official"] for p in paradigms.values()]))
        assert 0 <= m["teacher_top1_agreement"] <= 1 and m["teacher_kl"] >= 0


def test_cache_size_rows(tmp_path, tiny_data, tiny_teachers):
    payload = cache_size(CacheSizeConfig(data=tiny_data, teachers=tiny_teachers, out=tmp_path / "b", ks=(1, 4, 16, 64, 300),
                                         prob_dtypes=("float32",), samples=(8,), chunks=16, temperature=2.0))
    rows = [r for r in payload["rows"] if r["targets"] == "topk"]
    assert [r["k"] for r in rows] == [1, 4, 16, 64, 300]
    mass = [r["mass_kept"] for r in rows]
    kl = [r["kl"] for r in rows]
    assert all(a < b for a, b in zip(mass, mass[1:])) and abs(mass[-1] - 1.0) < 1e-5
    assert all(a > b for a, b in zip(kl, kl[1:])) and abs(kl[-1]) < 1e-4
    fields = {"k", "prob_dtype", "bytes_per_token", "raw_bytes_per_token", "mass_kept", "kl", "top1_agreement", "student_ce"}
    saved = json.loads((tmp_path / "b" / "cache_size.json").read_text())
    assert len(saved["rows"]) == 6 and all(fields <= set(r) for r in saved["rows"])
    assert any(r["targets"] == "sample" for r in saved["rows"])
    assert (tmp_path / "b" / "cache_size.png").stat().st_size > 10_000
    assert "| topk | 300 |" in (tmp_path / "b" / "cache_size.md").read_text()


def test_bits_per_byte_leaves_special_tokens_out_of_both_sums(tiny_data, tiny_teachers):
    """An independent count: nats of every target that stands for text, over the UTF-8 bytes of those
    targets' text; `</s>` targets (document ends) add neither nats nor bytes."""
    from logitcache.data import load_data
    from logitcache.metrics import lm_metrics
    from logitcache.tokenizer import EOS_ID

    data = load_data(tiny_data)
    tokenizer = load_tokenizer(data.tokenizer_path)
    dev = data.store.split("dev").astype(np.int64)
    with_eos = np.flatnonzero((dev[:, 1:] == EOS_ID).any(axis=1))
    assert len(with_eos) > 0  # the case under test is present: a document end inside a chunk
    rows = dev[np.unique(np.concatenate([with_eos, [0, 1, 2]]))]
    model = load_model(tiny_teachers[0])
    special_ids = set(tokenizer.get_added_tokens_decoder())
    nats, n_bytes = 0.0, 0
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.from_numpy(rows)).logits.double(), -1)  # (B, T, V)
    for b in range(rows.shape[0]):
        for t in range(1, rows.shape[1]):
            target = int(rows[b, t])
            if target in special_ids:
                continue
            nats -= float(log_probs[b, t - 1, target])
            n_bytes += len(tokenizer.decode([target], skip_special_tokens=False).encode("utf-8"))
    metrics = lm_metrics(model, rows, 4, torch.device("cpu"), byte_lengths=token_byte_lengths(tokenizer))
    assert math.isclose(metrics["bits_per_byte"], nats / math.log(2) / n_bytes, rel_tol=1e-6)


def test_validation_and_eval_share_one_path(tmp_path, tiny_data):
    """The val_ce a training run logs for its best model is the CE `eval` reports for it on the same rows."""
    from logitcache.data import load_data
    from logitcache.teacher import TeacherConfig, train_teacher
    from conftest import tiny_train

    out = tmp_path / "t"
    report = train_teacher(TeacherConfig(data=tiny_data, out=out, arch="gpt2", preset="gpt2-tiny", train=tiny_train(6, val_chunks=1000)))
    n_val = load_data(tiny_data).validation_rows("dev", 1000).shape[0]
    result = evaluate(EvalConfig(models=(out,), data=tiny_data, split="dev", device="cpu"))
    assert n_val == load_data(tiny_data).store.num_rows("dev")  # the validation subset is all of dev here
    assert math.isclose(result["models"][0]["ce"], report.best_val_ce, rel_tol=1e-6)
