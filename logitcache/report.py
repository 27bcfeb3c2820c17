"""The report of `run`: report.md, report.json (docs/architecture.md, "Public interfaces") and training-curve PNGs."""
from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path

from .files import write_json_atomic, write_text_atomic
from .store import cache_summary
from .training.loop import read_metrics

log = logging.getLogger(__name__)


def _by_path(results: dict, split: str) -> dict[str, dict]:
    return {m["path"]: m for m in results[split]["models"]}


def _model_entry(name: str, path: Path, results: dict) -> dict:
    dev, test = _by_path(results, "dev")[str(path)], _by_path(results, "test")[str(path)]
    entry = {"name": name, "path": str(path), "params": dev["params"], "dev_ce": dev["ce"], "test_ce": test["ce"],
             "dev_ppl": dev["ppl"], "test_ppl": test["ppl"], "dev_bits_per_byte": dev["bits_per_byte"]}
    if "teacher_kl" in dev:  # KL(teachers || model) and top-1 agreement with the teachers' ensemble
        entry["dev_teacher_kl"] = dev["teacher_kl"]
        entry["dev_teacher_top1_agreement"] = dev["teacher_top1_agreement"]
    if "teacher_positions_covered" in dev:  # teachers on tokenizers of their own: KL over the covered positions
        entry["dev_teacher_positions_covered"] = dev["teacher_positions_covered"]
    if "blimp" in dev:
        entry["blimp"] = dev["blimp"]["strict"]
        entry["blimp_official"] = dev["blimp"]["official"]
    return entry


def _student_group(kind: str, paths: list[Path], results: dict) -> dict:
    """One entry per student kind: the mean over seeds, plus each seed's numbers."""
    seeds = [_model_entry(f"{kind} ({p.name})", p, results) for p in paths]
    keys = ["dev_ce", "test_ce", "dev_ppl", "test_ppl", "dev_bits_per_byte"]
    if all("dev_teacher_kl" in s for s in seeds):
        keys += ["dev_teacher_kl", "dev_teacher_top1_agreement"]
    if all("blimp" in s for s in seeds):
        keys += ["blimp", "blimp_official"]
    mean = {key: statistics.fmean(s[key] for s in seeds) for key in keys}
    spread = {key: {"mean": mean[key], "min": min(s[key] for s in seeds), "max": max(s[key] for s in seeds)} for key in keys}
    return {"name": kind, "path": str(paths[0]), "params": seeds[0]["params"], **mean, "spread": spread, "seeds": seeds}


def write_report(work: Path, config, teacher_dirs: list[Path], students: dict, cache: Path, results: dict,
                 seconds: dict, ran: list[str]) -> dict:
    """`seconds`: every stage's time (from its stamp when reused); `ran`: the stages this invocation ran."""
    teachers = [_model_entry(section.name, path, results) for section, path in zip(config.teachers, teacher_dirs)]
    groups = {kind: _student_group(kind, paths, results) for kind, paths in students.items()}
    report = {
        "teachers": teachers,
        "students": groups,
        "cache": cache_entry(cache),
        "data": str(work / "data"),
        "stages": seconds,
        "stages_ran": [name for name in seconds if name in ran],
        "stages_reused": [name for name in seconds if name not in ran],
    }
    report["distillation_gain_dev_ce"] = groups["baseline"]["dev_ce"] - groups["distilled"]["dev_ce"]
    report["distillation_gain_test_ce"] = groups["baseline"]["test_ce"] - groups["distilled"]["test_ce"]
    pairs = list(zip(groups["distilled"]["seeds"], groups["baseline"]["seeds"]))
    report["seeds_distilled_better_dev"] = sum(d["dev_ce"] < b["dev_ce"] for d, b in pairs)
    report["seeds_distilled_better_test"] = sum(d["test_ce"] < b["test_ce"] for d, b in pairs)
    plots = plot_curves(work, students)
    report["plots"] = [str(p.relative_to(work)) for p in plots]
    write_json_atomic(work / "report.json", report)
    write_text_atomic(work / "report.md", markdown(report))
    return report


def cache_entry(cache) -> dict:
    """The report's `cache`: size against full logits, and what the targets are (their kind and its settings)."""
    summary = cache_summary(cache)
    attrs = summary["attrs"]
    entry = {"path": str(cache), "bytes_per_token": summary["bytes_per_token"], "bytes_on_disk": summary["bytes_on_disk"],
             "full_logit_bytes": summary["full_logit_bytes_per_token"] * attrs["n_rows"] * attrs["seq_len"],
             "full_logit_bytes_per_token": summary["full_logit_bytes_per_token"], "k": attrs["k"],
             "temperature": attrs["temperature"], "prob_dtype": attrs["prob_dtype"],
             "targets": attrs.get("targets", "topk")}
    keys = {"sample": ("samples", "proposal_temperature"), "mass": ("mass", "max_k")}.get(entry["targets"], ())
    return entry | {key: attrs[key] for key in keys}


def targets_text(c: dict) -> str:
    """What the cache's targets are, in words (a report without `targets` is of a top-k cache)."""
    kind = c.get("targets", "topk")
    if kind == "sample":
        return (f"sampled targets ({c['samples']} draws per position from p^(1/{c['proposal_temperature']}), the drawn "
                "ids with importance weights)")
    if kind == "mass":
        return (f"mass targets (per position the fewest top ids that hold {c['mass']} of the probability, at most "
                f"{c['max_k']})")
    return f"top-{c['k']} targets"


# t quantiles (0.975, df = n - 1) for the 95% interval of a mean over n paired seeds; 2.0 past 10 degrees of freedom
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def distillation_verdict(report: dict) -> str:
    """The sentence on the dev CE gain (baseline minus distilled, the mean over seeds). It says "helps" or "does not
    help" only when the numbers do: a gain that prints as 0.0000 is no difference, and with several seeds a gain
    inside the 95% interval of the paired per-seed gains is within the seeds' noise; one seed gives no noise
    estimate, and the sentence says so."""
    gain = report["distillation_gain_dev_ce"]
    if not math.isfinite(gain):  # a student whose loss diverged
        return "Distillation's effect is unknown: a student's dev CE is not a number."
    if f"{abs(gain):.4f}" == "0.0000":
        return (f"Distillation makes no difference at this precision: the distilled student's dev CE equals the "
                f"baseline's to 4 decimals (gain {gain:+.1e} nats/token).")
    direction = f"{abs(gain):.4f} nats/token {'lower' if gain > 0 else 'higher'} than the baseline's"
    pairs = list(zip(report["students"]["distilled"]["seeds"], report["students"]["baseline"]["seeds"]))
    if len(pairs) < 2:
        return (f"Distillation {'helps' if gain > 0 else 'does not help'} for this one student seed: the distilled "
                f"student's dev CE is {direction} (one seed measures no seed-to-seed noise: set student.seeds).")
    gains = [b["dev_ce"] - d["dev_ce"] for d, b in pairs]
    half = T_975.get(len(gains) - 1, 2.0) * statistics.stdev(gains) / math.sqrt(len(gains))
    noise = (f"over {len(gains)} seeds, 95% interval of the gain +-{half:.4f}; distilled better in "
             f"{sum(g > 0 for g in gains)} of {len(gains)} seeds")
    if abs(gain) <= half:
        return (f"Distillation's effect is within the seeds' noise: the distilled student's dev CE is {direction} "
                f"on average ({noise}).")
    return (f"Distillation {'helps' if gain > 0 else 'does not help'}: the distilled student's dev CE is {direction} "
            f"on average ({noise}).")


def model_table_lines(report: dict) -> tuple[list[str], bool, list[dict]]:
    """The title and one row per teacher and student group: CE, perplexity, bits per byte, KL, BLiMP."""
    has_blimp = all("blimp" in m for m in report["teachers"])
    # KL columns whenever some model has them: a teacher on a tokenizer of its own is scored on its own data,
    # without KL to the teachers, and its row shows "-" there
    models = report["teachers"] + list(report["students"].values())
    has_kl = any("dev_teacher_kl" in m for m in models)
    head = "| model | params | dev CE | dev ppl | test CE | test ppl | dev bits/byte |" + (
        " dev KL to teachers | dev top-1 agreement |" if has_kl else "") + (
        " BLiMP strict | BLiMP official |" if has_blimp else "")
    lines = ["# logitcache run report", "", head, "|" + "---|" * (head.count("|") - 1)]

    def row(name, m):
        cells = [name, f"{m['params'] / 1e6:.2f}M", f"{m['dev_ce']:.4f}", f"{m['dev_ppl']:.1f}", f"{m['test_ce']:.4f}",
                 f"{m['test_ppl']:.1f}", f"{m['dev_bits_per_byte']:.4f}"]
        if has_kl:
            cells += [f"{m['dev_teacher_kl']:.4f}", f"{m['dev_teacher_top1_agreement']:.3f}"] if "dev_teacher_kl" in m \
                else ["-", "-"]
        if has_blimp:
            cells += [f"{m.get('blimp', float('nan')):.3f}", f"{m.get('blimp_official', float('nan')):.3f}"]
        return "| " + " | ".join(cells) + " |"

    for t in report["teachers"]:
        lines.append(row(f"teacher {t['name']}", t))
    n_seeds = len(report["students"]["distilled"]["seeds"])
    for kind in ("distilled", "baseline"):
        label = "student, distilled from the cache" if kind == "distilled" else "student, no distillation (alpha = 1)"
        lines.append(row(f"{label}{f' (mean of {n_seeds} seeds)' if n_seeds > 1 else ''}", report["students"][kind]))
    return lines, has_kl, models


def seed_spread_lines(report: dict) -> list[str]:
    """With several student seeds: each metric's mean, min .. max and wins, then every seed's CEs."""
    n_seeds = len(report["students"]["distilled"]["seeds"])
    lines = []
    if n_seeds > 1:
        d_group, b_group = report["students"]["distilled"], report["students"]["baseline"]
        keys = ["dev_ce", "test_ce"] + (["blimp", "blimp_official"] if "blimp" in d_group["spread"] else [])
        names = {"dev_ce": "dev CE", "test_ce": "test CE", "blimp": "BLiMP strict", "blimp_official": "BLiMP official"}
        lines += ["", f"Over {n_seeds} student seeds (mean, min .. max):", "",
                  "| metric | distilled | baseline | distilled better in |", "|---|---|---|---|"]
        for key in keys:
            d, b = d_group["spread"][key], b_group["spread"][key]
            lower_is_better = key.endswith("_ce")
            wins = sum((ds[key] < bs[key]) if lower_is_better else (ds[key] > bs[key])
                       for ds, bs in zip(d_group["seeds"], b_group["seeds"]))
            lines.append(f"| {names[key]} | {d['mean']:.4f} ({d['min']:.4f} .. {d['max']:.4f}) | "
                         f"{b['mean']:.4f} ({b['min']:.4f} .. {b['max']:.4f}) | {wins} of {n_seeds} seeds |")
        lines += ["", "| seed | distilled dev CE | baseline dev CE | distilled test CE | baseline test CE |",
                  "|---|---|---|---|---|"]
        for d, b in zip(d_group["seeds"], b_group["seeds"]):
            lines.append(f"| {d['name'].split('seed')[-1].rstrip(')')} | {d['dev_ce']:.4f} | {b['dev_ce']:.4f} | "
                         f"{d['test_ce']:.4f} | {b['test_ce']:.4f} |")
    return lines


def cache_and_stages_lines(report: dict) -> list[str]:
    """The cache's size against full logits, the distillation verdict, and the stages that ran or were reused."""
    c = report["cache"]
    lines = [
        "",
        distillation_verdict(report),
        "",
        "## Cache",
        "",
        f"- {targets_text(c)} at T = {c['temperature']}, probabilities as {c['prob_dtype']}",
        f"- {c['bytes_per_token']:.2f} bytes per token on disk, against {c['full_logit_bytes_per_token']:.0f} for full fp32 logits "
        f"({c['full_logit_bytes_per_token'] / max(c['bytes_per_token'], 1e-9):.0f}x smaller)",
        f"- {c['bytes_on_disk'] / 1e6:.1f} MB on disk (tokens included) instead of {c['full_logit_bytes'] / 1e9:.2f} GB of full logits",
        "",
        "## Stages",
        "",
        "Ran: the stage ran in the invocation that wrote this report; reused: its output, complete for the same "
        "config and inputs, came from an earlier one (its seconds are that run's).",
        "",
        "| stage | this invocation | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {'ran' if name in report['stages_ran'] else 'reused'} | {sec:.0f} |"
              for name, sec in report["stages"].items()]
    lines += [f"| total | {len(report['stages_ran'])} ran, {len(report['stages_reused'])} reused | "
              f"{sum(report['stages'].values()):.0f} |", ""]
    return lines


def markdown(report: dict) -> str:
    lines, has_kl, models = model_table_lines(report)
    lines += seed_spread_lines(report)
    if has_kl and not all("dev_teacher_kl" in m for m in models):
        lines += ["", "KL and top-1 agreement: to the ensemble of the teachers on the data's tokenizer, on the dev "
                  "split; \"-\": a model scored without them (a teacher on a tokenizer of its own, on its own data)."]
    lines += cache_and_stages_lines(report)
    lines += [f"![{Path(p).stem}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def plot_curves(work: Path, students: dict) -> list[Path]:
    """Student training curves: CE and KL separately, and validation CE, distilled vs baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for kind, paths in students.items():
        for path in paths:
            records = read_metrics(path)
            train = [r for r in records if "ce" in r]
            val = [r for r in records if "val_ce" in r]
            label = f"{kind} ({path.name.split('-')[-1]})"
            axes[0].plot([r["step"] for r in train], [r["ce"] for r in train], label=label, alpha=0.8)
            if any("kl" in r for r in train):
                axes[1].plot([r["step"] for r in train], [r["kl"] for r in train], label=label, alpha=0.8)
            axes[2].plot([r["step"] for r in val], [r["val_ce"] for r in val], marker="o", label=label)
    axes[0].set(xlabel="step", ylabel="train CE (nats/token)", title="student CE term")
    axes[1].set(xlabel="step", ylabel="T^2 KL(teacher || student)", title="student KL term (distilled only)")
    axes[2].set(xlabel="step", ylabel="validation CE (nats/token)", title="student validation CE")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = work / "student_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
