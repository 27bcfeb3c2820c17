"""`bench cache-size`: cache size against target accuracy (and student quality) for k = 1 .. 256.

Every row is dumped from the same teachers over the same chunks, then compared position by
position with the full ensemble distribution: probability mass kept, KL(full || cached target)
where the cached target spreads its tail mass uniformly over the ids it did not keep (so the KL
counts both truncation and quantisation, and is 0 at k = vocab), and top-1 agreement.

With a teacher on a tokenizer of its own the full distribution is the dump's mixed ensemble (teachers/align.py,
teachers/mixed.py) over the data's ids, which holds 1 - u of the mass, u being the mass on teacher tokens with no
counterpart in the data's vocabulary. The comparison is then over the positions some teacher aligns
(`positions_covered` of them) and over the data's ids plus one more outcome, "unmapped", holding u: the
cached tail spreads uniformly over the ids it did not keep and that outcome, so the KL is again 0 at
k = vocab up to quantisation. `mass_kept` is the cached mass out of the teachers' whole mass (mapped and not).

Mass-target rows (`--mass`: dump --targets mass) keep a different number of ids per position; their tail
spreads over the ids each position did not keep, and their "k" is the mean number kept. With
`--train-steps` every cache trains one student per `--student-seeds` seed at the same steps, and the
equal-bytes summary names the smallest mass-target cache whose mean student CE is within 0.005 of the
top-32 student's (equal_bytes).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from ._settings import to_dict
from .config import CacheSizeConfig  # noqa: F401  (re-exported)
from .data.prepared import load_data, spread_indices
from .dump import DumpConfig, dump
from .evaluate import mixed_ensemble_over
from .files import write_json_atomic, write_text_atomic
from .progress import NULL_PROGRESS, ProgressHook
from .store import CacheReader, cache_summary
from .teachers.cross import own_tokenizer
from .teachers.ensemble import Ensemble, load_teachers
from .teachers.mixed import MixedEnsemble
from .train_student import StudentConfig, train_student
from .training.loop import TrainConfig

log = logging.getLogger(__name__)


def target_accuracy(reader: CacheReader, ensemble, rows: np.ndarray, batch_size: int = 8) -> dict:
    """mass kept, KL(full || cached with uniform tail) and top-1 agreement, averaged over positions (those some
    teacher aligns, for a MixedEnsemble: module docstring)."""
    vocab = ensemble.vocab_size
    mixed = isinstance(ensemble, MixedEnsemble)
    mass, kl, agree, count, total = 0.0, 0.0, 0, 0, 0
    weights_kind = reader.layout.with_weights
    for start in range(0, rows.shape[0], batch_size):
        stop = min(start + batch_size, rows.shape[0])
        tokens = torch.from_numpy(rows[start:stop].astype(np.int64))
        cached = reader.read(start, stop)
        ids, probs = torch.from_numpy(cached.ids), torch.from_numpy(cached.probs)
        target_probs = probs if not weights_kind else torch.from_numpy(cached.weights)  # sampled: the weights
        if mixed:
            full, covered = ensemble.targets(tokens, np.arange(start, stop))  # (B, T, V), (B, T)
            here = covered > 0
            total += here.numel()
            full, ids, probs, target_probs = full[here], ids[here], probs[here], target_probs[here]  # (n, ...)
            unmapped = (1.0 - full.sum(-1, keepdim=True)).clamp(min=0)  # (n, 1)
            full = torch.cat([full, unmapped], dim=-1)  # (n, V + 1): the last outcome is "unmapped"
        else:
            full = ensemble.probs(tokens)  # (B, T, V)
            total += full.shape[0] * full.shape[1]
        kept = target_probs.sum(-1, keepdim=True).clamp(max=1.0)  # (..., 1)
        k_eff = ids.shape[-1]
        if reader.layout.ragged:  # mass targets: each position's own number of ids
            ids, k_eff = ragged_slots(ids, probs)
        outcomes = full.shape[-1]
        tail = (1.0 - kept).clamp(min=1e-12) / (outcomes - torch.as_tensor(k_eff)).clamp(min=1)  # k_eff: int or (..., 1)
        approx = tail.expand(*full.shape).clone()
        approx.scatter_(-1, ids, torch.zeros_like(target_probs))
        approx.scatter_add_(-1, ids, target_probs)  # padded duplicates add 0
        approx = approx.clamp(min=1e-12)
        kl += float((torch.xlogy(full, full) - full * torch.log(approx)).sum())
        mass += float(full.gather(-1, ids).mul(target_probs > 0).sum()) if weights_kind else float(probs.sum())
        agree += int((approx[..., :vocab].argmax(-1) == full[..., :vocab].argmax(-1)).sum())
        count += full[..., 0].numel()
    out = {"mass_kept": mass / max(count, 1), "kl": kl / max(count, 1), "top1_agreement": agree / max(count, 1)}
    if mixed:
        out["positions_covered"] = count / max(total, 1)
    return out


def ragged_slots(ids: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass targets (..., K) with id 0, p 0 past each position's count -> ids whose p = 0 slots point at the
    position's most probable id (so the scatters in target_accuracy add 0 there and the id keeps its p),
    and the ids kept per position (..., 1), the tail's share of the vocabulary being V minus those.
    A kept id whose code rounded it to 0 counts in the tail, as in the losses."""
    kept = probs > 0  # (..., K)
    first = ids.gather(-1, probs.argmax(-1, keepdim=True))  # (..., 1)
    return torch.where(kept, ids, first), kept.sum(-1, keepdim=True)


def _student_ces(config: CacheSizeConfig, cache: Path, out: Path, alpha: float, online: tuple = ()) -> list[float]:
    """The best dev CE of one student per seed (--student-seeds, else --seed), the same steps each."""
    seeds = config.student_seeds or (config.seed,)
    return [_student_ce(dataclasses.replace(config, seed=seed), cache, out / f"seed{seed}" if config.student_seeds else out,
                        alpha, online) for seed in seeds]


def _student_ce(config: CacheSizeConfig, cache: Path, out: Path, alpha: float, online: tuple = ()) -> float:
    train = TrainConfig(lr=config.student_lr, batch_size=config.student_batch_size, max_steps=config.train_steps,
                        warmup_steps=max(1, config.train_steps // 10), val_chunks=256, seed=config.seed)
    student = StudentConfig(cache=cache, data=config.data, out=out, preset=config.student_preset, alpha=alpha,
                            online_teachers=online, train=train, shuffle_buffer=1024)
    report = train_student(student, overwrite=True)  # bench's own folder: a rerun replaces it
    return report.best_val_ce


def cache_size(config: CacheSizeConfig, progress: ProgressHook = NULL_PROGRESS) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(config.data)
    indices = spread_indices(data.store.num_rows("train"), config.chunks)  # the rows each dump caches (spread)
    rows = data.store.split("train")[indices]
    teachers, infos = load_teachers(list(config.teachers), torch.device("cpu"), data, own_tokenizers=True)
    if any(own_tokenizer(i) for i in infos):  # the dump's mixed ensemble as the full distribution
        ensemble = mixed_ensemble_over(data, "train", indices, teachers, infos, config.temperature, config.combine,
                                       torch.device("cpu"))
    else:
        ensemble = Ensemble(teachers, config.combine, config.temperature, torch.device("cpu"), vocab_size=data.vocab_size)
    variants = [("topk", k, dtype) for dtype in config.prob_dtypes for k in config.ks if k <= data.vocab_size]
    variants += [("sample", n, dtype) for dtype in config.prob_dtypes for n in config.samples]
    variants += [("mass", m, dtype) for dtype in config.prob_dtypes for m in config.masses]
    result_rows = []
    for targets, width, dtype in variants:
        name = f"{targets}{width}-{dtype}"
        cache_path = out / "caches" / f"{name}.zarr"
        shutil.rmtree(cache_path, ignore_errors=True)
        dump_cfg = DumpConfig(data=config.data, teachers=config.teachers, out=cache_path, top_k=width if targets == "topk" else 1,
                              samples=width if targets == "sample" else 16, targets=targets, temperature=config.temperature,
                              combine=config.combine, prob_dtype=dtype, max_chunks=config.chunks, block_rows=64,
                              seed=config.seed, device="cpu", **mass_settings(config, targets, width))
        report = dump(dump_cfg, progress=progress)
        summary = cache_summary(cache_path)
        accuracy = target_accuracy(CacheReader(cache_path), ensemble, rows)
        row = {"k": width, "targets": targets, "prob_dtype": dtype, "bytes_per_token": summary["bytes_per_token"],
               "raw_bytes_per_token": summary["raw_bytes_per_token"], "compression_ratio": summary["compression_ratio"],
               **accuracy, "dump_tokens_per_s": report.tokens_per_s, "student_ce": None}
        if targets == "mass":
            row.update(mass_row(config, width, summary))
        if config.train_steps:
            row["student_ces"] = _student_ces(config, cache_path, out / "students" / name, config.alpha)
            row["student_ce"] = float(np.mean(row["student_ces"]))
        log.info("%s: %s", name, row)
        result_rows.append(row)
    payload = {"rows": result_rows, "vocab_size": data.vocab_size, "chunks": int(rows.shape[0]),
               "temperature": config.temperature, "full_logit_bytes_per_token": 4.0 * data.vocab_size,
               "config": to_dict(config)}
    coverage = CacheReader(out / "caches" / f"{result_rows[0]['targets']}{result_rows[0]['k']}-{result_rows[0]['prob_dtype']}.zarr",
                           require_complete=False).attrs.get("coverage") if result_rows else None
    if coverage:  # teachers with a tokenizer of their own: positions aligned, next tokens mapped (the dump's)
        payload["coverage"] = coverage
    if config.train_steps:
        reference = out / "caches" / next(f"{t}{w}-{d}.zarr" for t, w, d in variants)
        if not isinstance(ensemble, MixedEnsemble):  # online teachers read the data's tokens: one tokenizer only
            payload["online_full_ce"] = float(np.mean(_student_ces(config, reference, out / "students" / "online-full",
                                                                   config.alpha, tuple(config.teachers))))
        payload["baseline_ce"] = float(np.mean(_student_ces(config, reference, out / "students" / "ce-only", 1.0)))
        payload["equal_bytes"] = equal_bytes(result_rows)
    write_json_atomic(out / "cache_size.json", payload)
    write_text_atomic(out / "cache_size.md", markdown_table(payload))
    plot_cache_size(payload, out / "cache_size.png")
    return payload


def mass_settings(config: CacheSizeConfig, targets: str, width) -> dict:
    """The DumpConfig settings of a mass-target row (none for the other rows)."""
    return {"mass": float(width), "max_k": config.max_k} if targets == "mass" else {}


def mass_row(config: CacheSizeConfig, mass: float, summary: dict) -> dict:
    """A mass-target row's own fields: its "k" is the mean number of ids kept per position."""
    return {"k": summary["mean_ids_per_position"], "mass": float(mass), "max_k": config.max_k}


def row_label(row: dict) -> str:
    """k / N column: k, N, or "M (mean k, <= max_k)" for a mass-target row."""
    if row["targets"] == "mass":
        return f"{row['mass']:g} ({row['k']:.1f} ids, <= {row['max_k']})"
    return str(row["k"])


def equal_bytes(rows: list[dict], reference_k: int = 32, within: float = 0.005) -> dict | None:
    """The smallest mass-target cache whose student CE is within `within` of the top-`reference_k` student's
    (the first prob dtype that has that row), or the frontier when none is: every mass row's bytes and CE."""
    reference = next((r for r in rows if r["targets"] == "topk" and r["k"] == reference_k
                      and r["student_ce"] is not None), None)
    masses = sorted((r for r in rows if r["targets"] == "mass" and r["student_ce"] is not None),
                    key=lambda r: r["bytes_per_token"])
    if reference is None or not masses:
        return None
    goal = reference["student_ce"] + within
    found = next((r for r in masses if r["student_ce"] <= goal), None)
    return {"reference": {"k": reference_k, "bytes_per_token": reference["bytes_per_token"],
                          "student_ce": reference["student_ce"], "student_ces": reference.get("student_ces")},
            "within": within, "reached": found is not None,
            "smallest": None if found is None else {key: found[key] for key in ("mass", "max_k", "k", "bytes_per_token",
                                                                                "student_ce", "kl", "mass_kept")},
            "frontier": [{key: r[key] for key in ("mass", "k", "bytes_per_token", "student_ce")} for r in masses]}


def equal_bytes_lines(summary: dict | None) -> list[str]:
    """The equal-bytes summary as Markdown paragraphs (none without a top-32 row and mass rows with students)."""
    if not summary:
        return []
    ref = summary["reference"]
    head = (f"equal bytes: top-{ref['k']} students reach CE {ref['student_ce']:.4f} at {ref['bytes_per_token']:.2f} "
            f"bytes/token; goal: within {summary['within']} ({ref['student_ce'] + summary['within']:.4f})")
    if summary["reached"]:
        best = summary["smallest"]
        head += (f". Smallest mass-target cache within it: mass {best['mass']:g} (<= {best['max_k']} ids, "
                 f"{best['k']:.1f} on average) at **{best['bytes_per_token']:.2f} bytes/token**, CE "
                 f"{best['student_ce']:.4f}, {best['bytes_per_token'] / ref['bytes_per_token']:.2f}x the top-{ref['k']} bytes")
    else:
        head += ". No mass-target row reaches it; the frontier below"
    lines = ["| mass | mean ids | bytes/token | student CE | vs top-%d CE |" % ref["k"], "|---|---|---|---|---|"]
    lines += [f"| {r['mass']:g} | {r['k']:.1f} | {r['bytes_per_token']:.2f} | {r['student_ce']:.4f} | "
              f"{r['student_ce'] - ref['student_ce']:+.4f} |" for r in summary["frontier"]]
    return [head, "\n".join(lines)]


def markdown_table(payload: dict) -> str:
    lines = ["| targets | k / N | prob dtype | bytes/token | raw bytes/token | ratio | mass kept | KL (nats/token) | top-1 agr. | dump tok/s | student CE |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        ce = f"{r['student_ce']:.4f}" if r["student_ce"] is not None else "-"
        lines.append(f"| {r['targets']} | {row_label(r)} | {r['prob_dtype']} | {r['bytes_per_token']:.2f} | {r['raw_bytes_per_token']:.0f} | "
                     f"{r['compression_ratio']:.1f} | {r['mass_kept']:.4f} | {r['kl']:.4f} | {r['top1_agreement']:.4f} | "
                     f"{r['dump_tokens_per_s']:.0f} | {ce} |")
    extra = []
    if payload.get("online_full_ce") is not None:
        extra.append(f"online full-vocabulary distillation: student CE {payload['online_full_ce']:.4f}")
    if payload.get("baseline_ce") is not None:
        extra.append(f"CE-only baseline (alpha = 1): student CE {payload['baseline_ce']:.4f}")
    if any(r["targets"] == "sample" for r in payload["rows"]):
        extra.append("sampled rows: KL and top-1 compare the full ensemble with one draw's weighted target, which "
                     "is unbiased only in expectation (its KL is large by construction); compare them by student CE.")
    for entry in payload.get("coverage") or []:
        extra.append(f"teacher {entry['teacher']} (a tokenizer of its own): {entry['positions']:.1%} of positions aligned, "
                     f"{entry['next_tokens_mapped']:.1%} of its next tokens mapped onto the data's ids; mass kept, KL and "
                     "top-1 are over the positions some teacher aligns, the unmapped mass one more outcome")
    seeds = (payload.get("config") or {}).get("student_seeds") or []
    if len(seeds) > 1 and any(r["student_ce"] is not None for r in payload["rows"]):
        extra.append(f"student CE: the mean over seeds {', '.join(map(str, seeds))} (student_ces in the JSON), the same "
                     "steps for every cache")
    extra += equal_bytes_lines(payload.get("equal_bytes"))
    extra.append(f"full fp32 logits: {payload['full_logit_bytes_per_token']:.0f} bytes/token; T = {payload['temperature']}, "
                 f"{payload['chunks']} chunks")
    return "\n".join(lines) + "\n\n" + "\n\n".join(extra) + "\n"


FAMILY_LABELS = {"topk": lambda r: "top-k", "sample": lambda r: "sampled (N draws)",
                 "mass": lambda r: f"mass M (k by position, <= {r['max_k']}; mean k plotted)"}


def plot_cache_size(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_ce = any(r["student_ce"] is not None for r in payload["rows"])
    fig, axes = plt.subplots(1, 3 if has_ce else 2, figsize=(15 if has_ce else 10, 4.2))
    for targets, marker in (("topk", "o"), ("sample", "s"), ("mass", "^")):
        for dtype in sorted({r["prob_dtype"] for r in payload["rows"]}):
            rows = [r for r in payload["rows"] if r["targets"] == targets and r["prob_dtype"] == dtype]
            if not rows:
                continue
            label = f"{FAMILY_LABELS[targets](rows[0])}, {dtype}"
            axes[0].plot([r["k"] for r in rows], [r["bytes_per_token"] for r in rows], marker=marker, label=label)
            axes[1].plot([r["bytes_per_token"] for r in rows], [max(r["kl"], 1e-6) for r in rows], marker=marker, label=label)
            for r in rows:
                axes[1].annotate(f"{r['mass']:g}" if targets == "mass" else str(r["k"]),
                                 (r["bytes_per_token"], max(r["kl"], 1e-6)), fontsize=7, textcoords="offset points",
                                 xytext=(3, 3))
            if has_ce:
                axes[2].plot([r["bytes_per_token"] for r in rows], [r["student_ce"] for r in rows], marker=marker, label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="k (ids kept per token; mass: the mean) / N (draws)", ylabel="cache bytes per token (on disk)",
                title="cache size")
    axes[0].set_xscale("log", base=2)
    axes[1].set(xscale="log", yscale="log", xlabel="cache bytes per token (on disk)", ylabel="KL(full ensemble || cached target), nats/token",
                title="target accuracy")
    if has_ce:
        axes[2].set(xscale="log", xlabel="cache bytes per token (on disk)", ylabel="student validation CE (nats/token)",
                    title="student quality")
        if payload.get("online_full_ce") is not None:
            axes[2].axhline(payload["online_full_ce"], color="green", linestyle="--", label="online, full vocabulary")
        if payload.get("baseline_ce") is not None:
            axes[2].axhline(payload["baseline_ce"], color="red", linestyle=":", label="no distillation (alpha = 1)")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"logitcache: cache size vs accuracy (vocab {payload['vocab_size']}, T = {payload['temperature']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
