"""The student's step memory and speed with the fused head loss against the loss on the full logits.

    python benchmarks/bench_student_memory.py [--vocabs 128256,256000]
        [--rounds 3] [--skip-speed]

Memory: a LLaMA of 4 layers x 512 hidden, batch 8 x 512 tokens, top-32 targets (T = 2, alpha 0.5), one
step (forward, loss, backward) in a process of its own. Step memory = peak RSS (VmHWM, reset just before
the step) minus the RSS once the model and the batch are built. Arms: (a) the loss on the full logits
(--loss-chunk-tokens 0), (b) the fused head loss (the default), (c) the fused loss with alpha = 1 (CE
only), (d) the decoder without a head (its hidden states' mean square as the loss): the floor.

Speed: median step time (forward, loss, backward, AdamW) of (a) and (b), one step of each in turn on
one model for --rounds rounds after a warm-up round: the paper's student (llama-58m, vocabulary 16,000,
32 x 128) and the student above at vocabulary 128,256.

Prints the tables, then one JSON line.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_json, median, print_table  # noqa: E402

MEMORY_STUDENT = dict(n_layer=4, hidden=512, n_head=8, ffn=1024, batch=8, seq=512)
PAPER_STUDENT = dict(preset="llama-58m", vocab=16000, batch=32, seq=128)
TOP_K, TEMPERATURE = 32, 2.0


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """VmHWM back to the current RSS (Linux: 5 > /proc/self/clear_refs), so the peak is the step's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build(student: str, vocab: int):
    import torch

    from logitcache.teachers.models import build_model, get_preset
    from logitcache.teachers.presets import ModelPreset

    if student == "paper":
        preset, batch, seq = get_preset(PAPER_STUDENT["preset"]), PAPER_STUDENT["batch"], PAPER_STUDENT["seq"]
    else:
        m = MEMORY_STUDENT
        preset = ModelPreset("llama", m["n_layer"], m["hidden"], m["n_head"], m["ffn"], positions=m["seq"])
        batch, seq = m["batch"], m["seq"]
    model = build_model(preset, vocab, seed=0)
    # targets made at (B, T, K) only: a (B, T, V) tensor freed here could stay on the heap and hide the step's
    # own peak. K distinct ids per position, probabilities summing to 0.9 (a tail of 0.1).
    g = torch.Generator().manual_seed(0)
    ids = (torch.randint(0, vocab, (batch, seq, 1), generator=g) + torch.arange(TOP_K) * (vocab // TOP_K)) % vocab
    probs = 0.9 * torch.softmax(torch.randn(batch, seq, TOP_K, generator=g) * 2, -1).sort(-1, descending=True).values
    batch = {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g), "topk_ids": ids, "topk_probs": probs}
    return model, batch


def objective_for(arm: str):
    """(model, batch) -> loss for an arm: a (full logits), b (fused), c (fused, alpha 1), d (no head)."""
    from logitcache.train_student import DistillObjective

    if arm == "d":
        from logitcache.training.losses.linear import hidden_states_of

        def objective(model, batch):
            with hidden_states_of(model.get_output_embeddings()) as got:
                model(input_ids=batch["input_ids"])
            return got["hidden"].float().square().mean(), {}
    else:
        objective = DistillObjective(1.0 if arm == "c" else 0.5, TEMPERATURE, "bucket", "token", "topk", None,
                                     0 if arm == "a" else -1)
    return lambda model, batch: objective(model, batch)[0]


def run_memory(arm: str, vocab: int) -> dict:
    model, batch = build("memory", vocab)
    loss_of = objective_for(arm)
    gc.collect()
    base = rss_mb()
    reset_peak()
    loss_of(model, batch).backward()
    peak = rss_mb("VmHWM")
    return {"step_mb": peak - base, "base_mb": base}


def run_speed(student: str, vocab: int, rounds: int, arms: list[str]) -> dict:
    """One model, the arms' steps alternating over `rounds` rounds (the first a warm-up): {arm: median s}."""
    import torch

    model, batch = build(student, vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    losses = {arm: objective_for(arm) for arm in arms}
    for _ in range(rounds + 1):
        for arm in arms:
            t0 = time.perf_counter()
            losses[arm](model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times[arm].append(time.perf_counter() - t0)
    return {arm: median(ts[1:]) for arm, ts in times.items()}


def run_arm(spec: str, args) -> dict:
    """spec: memory:ARM:VOCAB or speed:STUDENT:VOCAB."""
    import torch

    torch.set_num_threads(args.threads)
    parts = spec.split(":")
    if parts[0] == "memory":
        return run_memory(parts[1], int(parts[2]))
    return run_speed(parts[1], int(parts[2]), args.rounds, ["a", "b"])


def run_process(spec: str, args) -> dict:
    cmd = [sys.executable, __file__, "--arm", spec, "--threads", str(args.threads), "--rounds", str(args.rounds)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm {spec} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"# {spec}: {result}", file=sys.stderr, flush=True)  # progress, for a run cut short
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabs", default="128256,256000", help="vocabularies of the memory arms")
    parser.add_argument("--rounds", type=int, default=3, help="speed: timed steps per arm, alternating (after one "
                                                                 "warm-up round)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        from logitcache.runtime.process import tune_process  # the heap settings train-student runs with

        tune_process()
        print(json.dumps(run_arm(args.arm, args)))
        return

    sys.stdout.reconfigure(line_buffering=True)  # each table as soon as it is measured
    vocabs = [int(v) for v in args.vocabs.split(",")]
    memory = {v: {arm: run_process(f"memory:{arm}:{v}", args) for arm in "abcd"} for v in vocabs}
    rows = []
    for v, arms in memory.items():
        a, b, c, d = (arms[k]["step_mb"] for k in "abcd")
        rows.append([v, a, b, c, d, b / a, b / c])
    m = MEMORY_STUDENT
    print_table(f"step memory MB (peak RSS - RSS after model and batch), LLaMA {m['n_layer']}x{m['hidden']}, "
                f"{m['batch']}x{m['seq']} tokens, top-{TOP_K}, fp32, {args.threads} threads",
                ["vocab", "(a) full logits", "(b) fused", "(c) fused CE", "(d) no head", "b/a", "b/c"], rows)
    result = {"bench": "student_memory",
              "memory_mb": {str(v): {k: arms[k]["step_mb"] for k in "abcd"} for v, arms in memory.items()},
              "fused_vs_full": {str(v): arms["b"]["step_mb"] / arms["a"]["step_mb"] for v, arms in memory.items()},
              "fused_vs_fused_ce": {str(v): arms["b"]["step_mb"] / arms["c"]["step_mb"] for v, arms in memory.items()}}
    if not args.skip_speed:
        rows, speed = [], {}
        for student, vocab in (("paper", PAPER_STUDENT["vocab"]), ("memory", 128256)):
            step_s = run_process(f"speed:{student}:{vocab}", args)
            full, fused = step_s["a"], step_s["b"]
            speed[student] = {"vocab": vocab, "full_s": full, "fused_s": fused, "fused_speedup_vs_full": full / fused}
            rows.append([f"{student} (V={vocab})", full, fused, full / fused])
        print_table(f"step time s (forward, loss, backward, AdamW), the arms alternating in one process, medians "
                    f"of {args.rounds} rounds after a warm-up", ["student", "(a) full logits", "(b) fused", "a/b"], rows)
        result["speed"] = speed
    emit_json(result)


if __name__ == "__main__":
    main()
