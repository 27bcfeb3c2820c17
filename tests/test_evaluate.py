import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from logitcache.bench import CacheSizeConfig, cache_size
from logitcache.errors import LogitcacheError
from logitcache.evaluate import EvalConfig, blimp_accuracy, blimp_prefix, evaluate, load_blimp, sentence_logprobs
from logitcache.training.metrics import byte_counts, lm_metrics
from logitcache.teachers.models import load_model
from logitcache.data.tokenizer import BOS_ID, EOS_ID, load_tokenizer

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
    from logitcache.data.prepared import load_data

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
    metrics = lm_metrics(model, rows, 4, torch.device("cpu"), bytes_of=byte_counts(tokenizer))
    assert math.isclose(metrics["bits_per_byte"], nats / math.log(2) / n_bytes, rel_tol=1e-6)


def test_validation_and_eval_share_one_path(tmp_path, tiny_data):
    """The val_ce a training run logs for its best model is the CE `eval` reports for it on the same rows."""
    from logitcache.data.prepared import load_data
    from logitcache.train_teacher import TeacherConfig, train_teacher
    from conftest import tiny_train

    out = tmp_path / "t"
    report = train_teacher(TeacherConfig(data=tiny_data, out=out, arch="gpt2", preset="gpt2-tiny", train=tiny_train(6, val_chunks=1000)))
    n_val = load_data(tiny_data).validation_rows("dev", 1000).shape[0]
    result = evaluate(EvalConfig(models=(out,), data=tiny_data, split="dev", device="cpu"))
    assert n_val == load_data(tiny_data).store.num_rows("dev")  # the validation subset is all of dev here
    assert math.isclose(result["models"][0]["ce"], report.best_val_ce, rel_tol=1e-6)


# --- BLiMP's prefix: the token in front of every training document ---------------------------------------------

def test_blimp_prefix_starts_every_training_document_and_the_export_prepends_it(tmp_path, tiny_raw, tiny_data,
                                                                                 tiny_teachers):
    """The id eval scores BLiMP after and the id the exported tokenizer prepends are one id, and it stands in
    front of every document of the train split: each non-empty line of the BabyLM-layout files."""
    import transformers

    from logitcache.data.cleaners import cleaner_for
    from logitcache.data.prepared import load_data
    from logitcache.export import ExportConfig, export

    data = load_data(tiny_data)
    prefix = blimp_prefix(data)
    export(ExportConfig(src=tiny_teachers[0], dst=tmp_path / "hf"))
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("The cat sees a dog.")["input_ids"]
    assert exported[0] == prefix
    assert f"prepends `{load_tokenizer(data.tokenizer_path).id_to_token(prefix)}`" in (tmp_path / "hf" / "README.md").read_text()
    # the training stream, cut at the prefix: one piece per cleaned line, in source order, each ended by </s>
    tokenizer = load_tokenizer(data.tokenizer_path)
    stream = data.store.split("train").reshape(-1).tolist()
    starts = [i for i, t in enumerate(stream) if t == prefix]
    pieces = [tokenizer.decode(stream[a + 1:b], skip_special_tokens=False) for a, b in zip(starts, starts[1:])]
    lines = [line.strip() for source in ("childes", "stories")
             for line in cleaner_for(source)((tiny_raw / f"{source}.train").read_text()).split("\n") if line.strip()]
    assert stream[0] == prefix and len(starts) >= len(lines) - 4  # the last few fall in the dropped remainder
    assert pieces == [line + "</s>" for line in lines[:len(pieces)]]


def test_blimp_prefix_without_a_bos_template_is_the_eos_that_ends_each_document(tmp_path, tiny_data):
    """A GPT-2-style tokenizer (its template adds nothing): documents are joined by EOS, so EOS is the prefix."""
    from test_inputs import documents, write_jsonl

    from logitcache.prepare import PrepareConfig, prepare
    from logitcache.data.prepared import load_data

    tokenizer = load_tokenizer(tiny_data / "tokenizer.json")
    spec = json.loads(tokenizer.to_str())
    spec["post_processor"] = None
    folder = tmp_path / "gpt2-style"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "</s>"}))
    paths = {split: write_jsonl(tmp_path / f"{split}.jsonl", documents(n, seed))
             for split, n, seed in (("train", 200, 1), ("dev", 60, 2), ("test", 20, 3))}
    prepare(PrepareConfig(train=paths["train"], dev=paths["dev"], test=paths["test"], tokenizer=folder,
                          out=tmp_path / "data", seq_len=32))
    data = load_data(tmp_path / "data")
    stream = data.store.split("train").reshape(-1)
    assert blimp_prefix(data) == EOS_ID and BOS_ID not in stream
    assert (stream == EOS_ID).sum() >= 199  # one after each of the 200 documents (the last may fall in the remainder)


def test_eval_refuses_blimp_on_data_that_records_no_document_prefix(tmp_path, tiny_data, tiny_teachers, copy_of):
    data = copy_of(tiny_data)
    meta_path = data / "tokens.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["logitcache"]["document_prefix"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LogitcacheError, match="records no document prefix"):
        evaluate(EvalConfig(models=tiny_teachers[:1], data=data, split="dev", blimp=blimp_dir(tmp_path), device="cpu"))


def test_raw_documents_are_lines_or_blank_line_blocks():
    from logitcache.prepare import raw_documents

    text = "First line.\n\n  Second line.\nThird line.\n"
    assert raw_documents("childes", text) == ["First line.", "Second line.", "Third line."]
    verse = "To be, or not to be,\nthat is the question.\n\nAy, there's the rub.\n"
    assert raw_documents("shakespeare", verse) == ["To be, or not to be,\nthat is the question.", "Ay, there's the rub."]


# --- bits per byte: UTF-8 bytes of the decoded text, for every tokenizer family --------------------------------

BYTE_TEXTS = ["hello\nhello", "té té", "hello 日本", "Crème brûlée, naïve café.\nSecond line: 東京タワー!\n\nEnd",
              "the cat sees a dog", "two  spaces inside\ta tab "]
TRAIN_LINES = [f"{a} {v} {o}." for a in ("the cat", "a dog", "my mother", "the old man") for v in ("sees", "likes", "holds")
               for o in ("the ball", "some water", "her book", "a red apple")] * 5


def byte_level_bpe():
    from logitcache.data.tokenizer import train_tokenizer

    return train_tokenizer(TRAIN_LINES + BYTE_TEXTS, 300)


def metaspace_bpe_with_byte_fallback(llama2_style: bool):
    """A sentencepiece-style BPE: ▁ for spaces, <0xNN> tokens for characters it never saw (the CJK here).
    Metaspace pre-tokenizer and decoder, or Llama-2's Prepend/Replace normalizer and Replace/Strip decoder."""
    from logitcache.data.tokenizer import train_metaspace_bpe

    return train_metaspace_bpe(TRAIN_LINES + ["Crème brûlée, naïve café, té"], 200, ("<pad>", "<s>", "</s>"),
                               llama2_style=llama2_style, template=False)

def unigram():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(TRAIN_LINES + BYTE_TEXTS * 3, trainers.UnigramTrainer(
        vocab_size=150, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    return tokenizer


TOKENIZERS = {"byte-level BPE": byte_level_bpe, "Metaspace BPE + byte fallback": lambda: metaspace_bpe_with_byte_fallback(False),
              "Llama-2-style BPE + byte fallback": lambda: metaspace_bpe_with_byte_fallback(True), "unigram": unigram}


class UniformLM(torch.nn.Module):
    """Logits all zero: every target costs ln V nats, so bits/byte is (text targets) * log2 V / bytes."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab_size))


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_bits_per_byte_counts_the_utf8_bytes_of_the_text(kind):
    tokenizer = TOKENIZERS[kind]()
    eos = tokenizer.token_to_id("</s>")
    encoded = [tokenizer.encode(text, add_special_tokens=False) for text in BYTE_TEXTS]
    assert all("<unk>" not in e.tokens for e in encoded)  # every text is representable: its decode is the text
    if "byte fallback" in kind:
        assert any(t.startswith("<0x") for e in encoded for t in e.tokens)  # the CJK went to byte tokens
    counts = byte_counts(tokenizer)
    for text, encoding in zip(BYTE_TEXTS, encoded):  # each text a document: after </s>, as prepare stores it
        row = torch.tensor([[eos] + encoding.ids + [eos]])
        assert int(counts.target_bytes(row).sum()) == len(text.encode("utf-8")), (kind, text, encoding.tokens)
    # a document that starts with a space: the bytes of what it decodes to (Metaspace cannot tell that space
    # from the one it prepends, and drops it)
    ids = tokenizer.encode("  two leading spaces", add_special_tokens=False).ids
    assert int(counts.target_bytes(torch.tensor([[eos] + ids])).sum()) == len(tokenizer.decode(ids).encode())
    # end to end through lm_metrics: all texts in one row, </s> between them
    row = [eos] + [i for e in encoded for i in e.ids + [eos]]
    vocab = tokenizer.get_vocab_size()
    metrics = lm_metrics(UniformLM(vocab), np.array([row]), 1, torch.device("cpu"), bytes_of=counts)
    n_text = sum(len(e.ids) for e in encoded)
    assert math.isclose(metrics["bits_per_byte"], n_text * math.log2(vocab) / sum(len(t.encode()) for t in BYTE_TEXTS),
                        rel_tol=1e-6)  # float32 logits


def test_bits_per_byte_refuses_a_decoder_it_cannot_count():
    from tokenizers import decoders

    tokenizer = byte_level_bpe()
    tokenizer.decoder = decoders.WordPiece()
    with pytest.raises(LogitcacheError, match="decoder step"):
        byte_counts(tokenizer)


def _strict_json(text: str):
    """json.loads that refuses what is not JSON (Python's json reads a bare NaN or Infinity)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


GOOD_PAIR = '{"sentence_good": "The cat sees a dog.", "sentence_bad": "The cat see a dog.", "UID": "p", "linguistics_term": "t"}'


@pytest.mark.parametrize("line,needle", [
    ('{"sentence_good": 3, "sentence_bad": "A cat."}', "sentence_good is 3, not a sentence"),
    ('{"sentence_good": "A cat.", "sentence_bad": null}', "sentence_bad is null, not a sentence"),
    ('{"sentence_good": "A \\ud800 cat.", "sentence_bad": "A cat."}', r"sentence_good holds '\\ud800'"),
    ('{"sentence_good": "", "sentence_bad": "A cat."}', 'sentence_good is "", not a sentence'),
    ('{"sentence_good": "A cat."}', "not a BLiMP record"),
    ('["A cat.", "A cats."]', "not a BLiMP record"),
    ('{"sentence_good": "A cat.", "sentence_bad": "A cats.", "linguistics_term": 7}', "linguistics_term is 7, not text"),
], ids=["number", "null", "surrogate", "empty", "missing", "list", "term-number"])
def test_a_bad_blimp_record_is_refused_in_one_line_before_anything_is_scored(tmp_path, tiny_data, tiny_teachers,
                                                                            monkeypatch, line, needle):
    import re

    from typer.testing import CliRunner

    from logitcache_cli.app import app

    def scored(*args, **kwargs):
        raise AssertionError("a model was loaded or scored before the BLiMP records were checked")

    monkeypatch.setattr("logitcache.evaluate.load_model", scored)
    monkeypatch.setattr("logitcache.evaluate.lm_metrics", scored)
    blimp = tmp_path / "blimp"
    blimp.mkdir()
    (blimp / "p.jsonl").write_text(f"{GOOD_PAIR}\n\n{line}\n{GOOD_PAIR}\n")  # the bad record on line 3
    result = CliRunner().invoke(app, ["eval", str(tiny_teachers[0]), "--data", str(tiny_data), "--blimp", str(blimp),
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {blimp / 'p.jsonl'}:3: ") and re.search(needle, lines[0]), lines


def test_an_empty_blimp_paradigm_is_refused_not_averaged_as_nan(tmp_path):
    blimp = tmp_path / "blimp"
    blimp.mkdir()
    (blimp / "a.jsonl").write_text(GOOD_PAIR + "\n")
    (blimp / "b.jsonl").write_text("\n")
    with pytest.raises(LogitcacheError, match=r"b\.jsonl: no BLiMP pairs"):
        load_blimp(blimp)
    with pytest.raises(LogitcacheError, match="holds no pairs"):  # the Python API's entry point too
        blimp_accuracy(None, None, {"p": []}, torch.device("cpu"))


def test_json_written_is_json_even_holding_a_nan(tmp_path, capsys):
    """Every JSON writer (--json files and stdout, the reports and stage files) writes a non-finite number as
    null: a bare NaN is no JSON (jq, JavaScript, Go refuse it)."""
    from logitcache.files import write_json_atomic
    from logitcache_cli.common import write_json

    payload = {"ce": float("nan"), "kl": [1.5, float("inf")], "blimp": {"strict": -float("inf")}}
    expected = {"ce": None, "kl": [1.5, None], "blimp": {"strict": None}}
    write_json_atomic(tmp_path / "a.json", payload)
    write_json(str(tmp_path / "b.json"), payload)
    write_json("-", payload)
    for text in ((tmp_path / "a.json").read_text(), (tmp_path / "b.json").read_text(), capsys.readouterr().out):
        assert _strict_json(text) == expected


def test_eval_json_output_is_strict_json(tmp_path, tiny_data, tiny_teachers):
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(tiny_teachers[0]), "--data", str(tiny_data), "--blimp",
                                      str(blimp_dir(tmp_path)), "--max-chunks", "4", "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    blimp = _strict_json(out.read_text())["models"][0]["blimp"]
    assert all(0 <= blimp[k] <= 1 for k in ("strict", "official", "overall"))


def test_run_refuses_a_bad_blimp_record_before_any_stage_runs(tmp_path):
    from logitcache.run import load_run_config, run_pipeline

    blimp = tmp_path / "blimp"
    blimp.mkdir()
    (blimp / "p.jsonl").write_text(GOOD_PAIR + '\n{"sentence_good": null, "sentence_bad": "A cat."}\n')
    config = load_run_config(None, (f'eval.blimp="{blimp}"',))
    with pytest.raises(LogitcacheError, match=r"p\.jsonl:2: sentence_good is null"):
        run_pipeline(config, tmp_path / "work")
    assert not (tmp_path / "work").exists()  # no corpus, data or model made for an eval that would fail


def test_metrics_over_no_rows_are_not_a_number_not_zero(tiny_data, tiny_teachers):
    """An empty split (prepare warns when test is) has no CE: NaN, written as null, never a perfect 0.0."""
    model = load_model(tiny_teachers[0])
    tokenizer = load_tokenizer(tiny_data / "tokenizer.json")
    rows = np.zeros((0, 16), dtype=np.int64)
    out = lm_metrics(model, rows, 4, torch.device("cpu"), bytes_of=byte_counts(tokenizer))
    assert out["tokens"] == 0 and all(math.isnan(out[k]) for k in ("ce", "ppl", "bits_per_byte"))
