"""`eval`: CE / perplexity / bits per byte (training/metrics.py, shared with validation), BLiMP minimal pairs,
agreement with the teachers.

Teachers with a tokenizer of their own (`--teacher` folders holding another tokenizer) are read as a dump
reads them (teachers/align.py, teachers/mixed.py: each chunk's text in the teacher's tokens, aligned and mapped onto the
data's ids, mean of probabilities over the teachers aligned at each position). KL and top-1 agreement are
then over the positions where at least one teacher is aligned, and `teacher_positions_covered` says which
fraction that is; `teacher_coverage` gives each teacher's fraction of positions aligned and of its
probability there that mapped onto the data's ids. The KL there is over the student's ids plus one bucket
(mixed_teacher_metrics).

BLiMP sentences are scored after the data's document prefix (data.document_prefix): the BOS that
`prepare` puts in front of every training document, or the EOS that ends every document for
tokenizers whose template adds no BOS. The exported tokenizer prepends the same token, so `official`
equals the BabyLM pipeline's `sentence_zero_shot` score of the exported folder."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import EvalConfig  # noqa: F401  (re-exported)
from .data.prepared import load_data, spread_indices
from .data.tokenizer import BOS_ID, PAD_ID, check_model_tokenizer, load_tokenizer
from .errors import LogitcacheError
from .progress import NULL_PROGRESS, ProgressHook
from .teachers.ensemble import Ensemble, load_teachers
from .teachers.models import load_model
from .runtime import device as D
from .training.losses import sparse_kl
from .training.metrics import byte_counts, lm_metrics

log = logging.getLogger(__name__)


BLIMP_SENTENCES = ("sentence_good", "sentence_bad")
BLIMP_LABELS = ("UID", "linguistics_term")  # optional; they name the paradigm and its category


def load_blimp(directory: Path, max_pairs: int = 0) -> dict[str, list[dict]]:
    """{paradigm UID: [records]} from a directory of BLiMP JSONL files. Every record read is checked here,
    before anything is scored: a record that is not a pair of sentences, or a file that holds no pair (a
    paradigm without pairs has no accuracy, and leaving it out would change what the macro average over
    paradigms means), is refused naming the file and line."""
    directory = Path(directory)
    files = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    if not files:
        raise LogitcacheError(f"no BLiMP *.jsonl files in {directory}")
    paradigms: dict[str, list[dict]] = {}
    source: dict[str, Path] = {}
    for path in files:
        records = []
        for line_no, raw in enumerate(path.read_bytes().splitlines(), 1):  # JSON's own line breaks: \r, \n
            if raw.strip():
                records.append(blimp_record(raw, f"{path}:{line_no}"))
            if max_pairs and len(records) >= max_pairs:
                break
        if not records:
            raise LogitcacheError(f"{path}: no BLiMP pairs (an empty paradigm has no accuracy): remove the file or "
                                  "restore its records")
        uid = records[0].get("UID", path.stem)
        if uid in paradigms:
            raise LogitcacheError(f"{path}: paradigm '{uid}' is also {source[uid]}: one file per paradigm")
        paradigms[uid], source[uid] = records, path
    return paradigms


def blimp_record(raw: bytes, where: str) -> dict:
    """One BLiMP JSONL line as a dict whose sentences are non-empty UTF-8 text; anything else is refused."""
    from .data.inputs import utf8_text

    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LogitcacheError(f"{where}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise LogitcacheError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(record, dict) or any(key not in record for key in BLIMP_SENTENCES):
        raise LogitcacheError(f"{where}: not a BLiMP record (needs sentence_good/sentence_bad)")
    for key in BLIMP_SENTENCES:
        if not isinstance(record[key], str) or not record[key].strip():
            raise LogitcacheError(f"{where}: {key} is {json.dumps(record[key])}, not a sentence")
        utf8_text(record[key], f"{where}: {key}")
    for key in BLIMP_LABELS:
        if key in record and not isinstance(record[key], str):
            raise LogitcacheError(f"{where}: {key} is {json.dumps(record[key])}, not text")
    return record


@torch.no_grad()
def sentence_logprobs(model, tokenizer, sentences: list[str], device: torch.device, batch_size: int = 64,
                      prefix_id: int = BOS_ID, pad_id: int = PAD_ID) -> np.ndarray:
    """Sum of token log-probs of each sentence after a one-token prefix (blimp_prefix: the token in front of
    every training document). (n,) float64."""
    encoded = [[prefix_id] + tokenizer.encode(s, add_special_tokens=False).ids for s in sentences]
    scores = np.zeros(len(sentences), dtype=np.float64)
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, e in enumerate(chunk):  # right padding: causal attention never sees it
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = True
        ids, mask = ids.to(device), mask.to(device)
        log_probs = F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)  # (B, W, V)
        token_lp = log_probs[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, W-1)
        scores[start:start + len(chunk)] = (token_lp * mask[:, 1:]).sum(-1).double().cpu().numpy()
    return scores


def blimp_prefix(data) -> int:
    """The id BLiMP sentences are scored after: the document prefix `prepare` recorded (data.document_prefix).
    Refused for data without that record or without a BOS or EOS, whose models never saw a start token."""
    if "document_prefix" not in data.attrs:
        raise LogitcacheError(f"{data.path} records no document prefix (prepared without a token in front of each "
                              "document, so BLiMP's first words would follow a token never trained on): prepare it "
                              "again (run --force prepare)")
    if data.attrs["document_prefix"] is None:
        raise LogitcacheError(f"BLiMP: the tokenizer of {data.path} has neither BOS nor EOS to score a sentence's "
                              "first word after")
    return int(data.attrs["document_prefix"])


def blimp_accuracy(model, tokenizer, paradigms: dict[str, list[dict]], device: torch.device,
                   progress: ProgressHook = NULL_PROGRESS, prefix_id: int = BOS_ID, pad_id: int = PAD_ID) -> dict:
    """BLiMP accuracy under both conventions: `strict` counts a pair only when log p(good) > log p(bad)
    (a tie is a miss); `official` is the BabyLM pipeline's (a tie goes to the good sentence). Each as a
    macro average over paradigms, per paradigm, and per BabyLM category (the `linguistics_term` field,
    macro over its paradigms). `overall` is the strict macro average (kept for older readers)."""
    per_paradigm: dict[str, dict[str, float]] = {}
    category_of: dict[str, str] = {}
    if not paradigms:
        raise LogitcacheError("BLiMP: no paradigms to score")
    progress.start("blimp", len(paradigms))
    for uid, records in paradigms.items():
        if not records:  # no accuracy to average (load_blimp refuses such a file)
            raise LogitcacheError(f"BLiMP paradigm '{uid}' holds no pairs")
        good = sentence_logprobs(model, tokenizer, [r["sentence_good"] for r in records], device, prefix_id=prefix_id,
                                 pad_id=pad_id)
        bad = sentence_logprobs(model, tokenizer, [r["sentence_bad"] for r in records], device, prefix_id=prefix_id,
                                pad_id=pad_id)
        per_paradigm[uid] = {"strict": float((good > bad).mean()), "official": float((good >= bad).mean()),
                             "pairs": len(records)}
        category_of[uid] = records[0].get("linguistics_term", "unknown") if records else "unknown"
        progress.update(1)
    progress.finish()
    categories: dict[str, dict[str, float]] = {}
    for category in sorted(set(category_of.values())):
        uids = [u for u, c in category_of.items() if c == category]
        categories[category] = {kind: float(np.mean([per_paradigm[u][kind] for u in uids])) for kind in ("strict", "official")}
    strict = float(np.mean([p["strict"] for p in per_paradigm.values()]))
    official = float(np.mean([p["official"] for p in per_paradigm.values()]))
    # `overall`, `paradigms` and `terms` keep their documented meaning (strict, floats) for older readers
    return {"strict": strict, "official": official, "overall": strict, "by_paradigm": per_paradigm,
            "categories": categories, "paradigms": {u: p["strict"] for u, p in per_paradigm.items()},
            "terms": {c: v["strict"] for c, v in categories.items()}}


def mixed_ensemble_over(data, split: str, indices: np.ndarray, models: list, infos: list[dict], temperature: float,
                        combine: str, device: torch.device):
    """The MixedEnsemble of teachers (some on a tokenizer of their own) over split rows `indices` (its row keys
    are positions in them): the dump's aligners (teachers/align.py) for those teachers, None for the others. Shared by
    eval and bench cache-size."""
    from .teachers.combines import refuse_mean_logits
    from .teachers.cross import chunk_aligners, own_tokenizer
    from .teachers.mixed import MixedEnsemble

    refuse_mean_logits(combine, [Path(i["path"]).name for i in infos if own_tokenizer(i)])
    aligners = chunk_aligners(data, split, indices, models, infos)
    return MixedEnsemble(list(zip(models, aligners)), temperature, device, vocab_size=data.vocab_size)


@torch.no_grad()
def mixed_teacher_metrics(model, rows: np.ndarray, ensemble, batch_size: int, device: torch.device) -> dict:
    """Agreement and KL with a MixedEnsemble over (N, T) rows (row keys 0..N-1), at the positions where at
    least one teacher is aligned. There the teachers' combined distribution p over the data's ids sums to
    1 - u, u being the mass on teacher tokens with no counterpart in the data's vocabulary; the KL is over
    the ids p reaches plus one bucket, holding u against the model's probability on the ids p gives 0 (the
    training loss's tail bucket with every nonzero id kept): KL = sum_{p_v > 0} p_v log(p_v / q_v) +
    u log(u / q_rest), computed by the loss itself (training/losses.sparse_kl). Top-1 agreement: the model's argmax is the argmax of p."""
    was_training = model.training
    model.eval()
    agree = kl_sum = covered = total = 0.0
    for start in range(0, rows.shape[0], batch_size):
        ids = torch.from_numpy(rows[start:start + batch_size].astype(np.int64)).to(device)  # (B, T)
        teacher, count = ensemble.targets(ids, np.arange(start, start + ids.shape[0]))  # (B, T, V), (B, T)
        logits = model(input_ids=ids).logits.float()[..., :teacher.shape[-1]]  # (B, T, V)
        here = count > 0  # (B, T)
        p, z = teacher[here], logits[here]  # (n, V) at the covered positions
        every_id = torch.arange(p.shape[-1], device=p.device).expand_as(p)  # (n, V): ids with p = 0 are the tail
        t = ensemble.temperature  # the loss's bucket KL, summed over the n positions ("paper": sum / B, B = 1)
        kl_sum += float(sparse_kl(z[None], every_id[None], p[None], t, reduction="paper")) / t**2
        agree += float((z.argmax(-1) == p.argmax(-1)).sum())
        covered += float(here.sum())
        total += here.numel()
    model.train(was_training)
    return {"teacher_top1_agreement": agree / max(covered, 1.0), "teacher_kl": kl_sum / max(covered, 1.0),
            "teacher_positions_covered": covered / max(total, 1.0)}


def evaluate(config: EvalConfig, progress: ProgressHook = NULL_PROGRESS) -> dict:
    paradigms = load_blimp(config.blimp, config.blimp_max_pairs) if config.blimp else None  # refused before scoring
    device = D.pick_device(config.device, D.DistEnv())
    data = load_data(config.data)
    tokenizer = load_tokenizer(data.tokenizer_path)
    rows = data.store.split(config.split)
    indices = spread_indices(rows.shape[0], config.max_chunks)
    rows = rows[indices]
    bytes_of = byte_counts(tokenizer)
    ensemble = mixed = None
    if config.teachers:
        from .teachers.cross import own_tokenizer

        teachers, infos = load_teachers(list(config.teachers), device, data, own_tokenizers=True)
        if any(own_tokenizer(i) for i in infos):
            mixed = mixed_ensemble_over(data, config.split, indices, teachers, infos, config.temperature,
                                        config.combine, device)
        else:
            ensemble = Ensemble(teachers, config.combine, config.temperature, device, vocab_size=data.vocab_size)
    prefix = blimp_prefix(data) if paradigms is not None else None
    pad = next(v for v in (data.special_ids["pad"], data.special_ids["eos"], 0) if v is not None)
    results = []
    for path in config.models:
        model = load_model(path).to(device)
        check_model_tokenizer(path, int(model.config.vocab_size), data, f"model {path}")
        entry = {"path": str(path), "params": sum(p.numel() for p in model.parameters()), "split": config.split}
        entry.update(lm_metrics(model, rows, config.batch_size, device, bytes_of=bytes_of, ensemble=ensemble,
                                progress=progress))
        if mixed is not None:
            mixed.stats[:] = 0  # coverage of this model's pass only
            entry.update(mixed_teacher_metrics(model, rows, mixed, config.batch_size, device))
            entry["teacher_coverage"] = [{"teacher": Path(info["path"]).name, **c}
                                         for info, c in zip(infos, mixed.coverage())]
        if paradigms is not None:
            entry["blimp"] = blimp_accuracy(model, tokenizer, paradigms, device, progress, prefix, pad)
        results.append(entry)
        del model
    return {"models": results}
