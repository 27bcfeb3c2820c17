"""The memory plan (`logitcache plan`, logitcache/training/plan.py) against the measured peak, and the plan's
table of student sizes that fit a GPU.

    python benchmarks/bench_plan.py [--steps 2] [--table-only]
    python benchmarks/bench_plan.py --device cuda --precision bf16      (on a GPU: benchmarks/gpu_check.sh)

Measured: a LLaMA student of 4 layers x 512 hidden (8 heads, MLP 1024), vocabulary 128,256, one micro-batch of
8 x 512 tokens with top-32 targets (alpha 0.5, T = 2), fp32 on CPU; each arm in its own process. Step memory =
the peak RSS over --steps training steps (forward, backward, clip, AdamW, as the loop runs them) minus the RSS
once the model and the batch are built (the peak is reset there, /proc/self/clear_refs), and the live bytes:
what a step keeps to the next (AdamW's moments, the unfused loss's reused buffer) plus the most bytes one
more step holds allocated at once (the profiler's allocations and frees, summed in order). The plan's step
memory is its peak less its weights and its batch. Goal: the plan's live terms within 15% of the live bytes
(the bytes torch's allocator holds; MKL's own packing buffers, ~30 MB, aside) in every arm. RSS is reported
beside them: the plan adds the unfused loss's kept logits block on CPU, which glibc keeps in most runs, and
with the fused loss glibc's footprint varies by run. With --device cuda the measure is
torch.cuda.max_memory_allocated less the memory allocated once the model and the batch are on the GPU (the
caching allocator's own count: no CUDA context, no cached free blocks), and --precision bf16 runs the step
under bf16 autocast as train-student does.

Then the plan alone (an estimate, nothing is run): LLaMA students at vocabulary 128,256 and sequences of 2,048
tokens, the most rows per micro-batch that fit a 24 GiB and an 80 GiB GPU with each option (bf16 on one GPU;
FSDP over 8 GPUs). Prints the tables, then one JSON line.
"""
from __future__ import annotations

import sys

from logitcache.runtime.process import tune_process

if "--heap=default" not in sys.argv:  # an arm's process: the parent passes its options as --name=value
    tune_process()  # before torch is imported (logitcache/runtime/process.py), as the CLI does

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from common import emit_json, parse_or_run_arm, print_table, run_arms_interleaved  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, MLP = 128_256, 512, 4, 8, 1024
ROWS, SEQ, TOP_K = 8, 512, 32
GOAL = 0.15
ARMS = {"unfused": {"loss_chunk_tokens": 0}, "unfused + checkpointing": {"loss_chunk_tokens": 0, "activation_checkpointing": True},
        "fused": {"loss_chunk_tokens": -1}, "fused + checkpointing": {"loss_chunk_tokens": -1, "activation_checkpointing": True}}

# LLaMA-3-style shapes at vocabulary 128,256 (hidden, layers, heads, kv heads, MLP, tied head)
SIZES = {
    "0.5B": (1024, 24, 16, 8, 4096, True),
    "1B (Llama-3.2-1B)": (2048, 16, 32, 8, 8192, True),
    "3B (Llama-3.2-3B)": (3072, 28, 24, 8, 8192, True),
    "8B (Llama-3.1-8B)": (4096, 32, 32, 8, 14336, False),
}
TABLE_SEQ = 2048


def llama_config(hidden=HIDDEN, layers=LAYERS, heads=HEADS, kv_heads=HEADS, mlp=MLP, tied=False, vocab=VOCAB):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                       max_position_embeddings=max(SEQ, TABLE_SEQ))


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def run_arm(arm: str, work, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from logitcache.train_student import DistillObjective
    from logitcache.training.loop import (TrainConfig, allocate_optimizer_state, enable_activation_checkpointing,
                                         make_optimizer)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = AutoModelForCausalLM.from_config(llama_config()).to(device)
    model.train()
    options = ARMS[arm]
    if options.get("activation_checkpointing"):
        enable_activation_checkpointing(model)
    objective = DistillObjective(alpha=0.5, temperature=2.0, tail="bucket", reduction="token", targets="topk",
                                 chunk_tokens=options["loss_chunk_tokens"])
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(ROWS, SEQ, TOP_K, generator=g), -1) * 0.9  # (B, T, K), a 0.1 tail
    batch = {"input_ids": torch.randint(0, VOCAB, (ROWS, SEQ), generator=g),
             "topk_ids": torch.randint(0, VOCAB, (ROWS, SEQ, TOP_K), generator=g), "topk_probs": probs}
    batch = {k: v.to(device) for k, v in batch.items()}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS: the peak from here on
            f.write("5")
        base = rss_mb()
    optimizer = make_optimizer(model, TrainConfig())
    allocate_optimizer_state(optimizer)  # as the loop does: the step's memory includes AdamW's moments

    def step():
        with autocast:
            loss, _ = objective(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        return {"step_mb": torch.cuda.max_memory_allocated() / 2**20 - base, "base_mb": base, "seconds": times}
    result = {"step_mb": rss_mb("VmHWM") - base, "base_mb": base, "seconds": times}
    # the live bytes: what is held between steps, plus the most one more step holds at once (the profiler's
    # records, taken after the RSS is read: they take memory of their own)
    result["live_mb"] = (held_between_steps(optimizer) + live_peak_bytes(step)) / 2**20
    return result


def held_between_steps(optimizer) -> int:
    """Bytes the step keeps from one step to the next (the model and the batch aside): AdamW's moments and
    the unfused loss's reused gradient buffer (`losses/fused.py`); gradients are freed by zero_grad."""
    import torch

    from logitcache.training.losses import fused

    moments = sum(t.nbytes for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor))
    return moments + sum(t.nbytes for t in fused._WORKSPACE.values())


def live_peak_bytes(fn) -> int:
    """The most bytes `fn` holds allocated at once on CPU beyond what was allocated when it started: the
    profiler's memory events, every allocation and free in order, summed."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()  # negative for a free
        peak = max(peak, held)
    return peak


def planned(arm: str, args):
    from logitcache.training.plan import ModelShape, Setup, plan

    setup = Setup(micro_rows=ROWS, seq_len=SEQ, precision=args.precision, device=args.device, top_k=TOP_K, **ARMS[arm])
    return plan(ModelShape.of(llama_config()), setup)


def size_table() -> list[dict]:
    from logitcache.training.plan import ModelShape, Setup, largest_micro_batch

    options = {"unfused": {}, "checkpointing": {"activation_checkpointing": True},
               "fused loss": {"loss_chunk_tokens": -1},
               "fused + checkpointing": {"loss_chunk_tokens": -1, "activation_checkpointing": True},
               "FSDP x 8 + fused + checkpointing": {"loss_chunk_tokens": -1, "activation_checkpointing": True,
                                                     "fsdp": True, "world": 8}}
    rows = []
    for name, (hidden, layers, heads, kv, mlp, tied) in SIZES.items():
        shape = ModelShape.of(llama_config(hidden, layers, heads, kv, mlp, tied))
        for option, settings in options.items():
            setup = Setup(micro_rows=1, seq_len=TABLE_SEQ, precision="bf16", device="cuda", **settings)
            rows.append({"student": name, "params_b": round(shape.params / 1e9, 2), "option": option,
                         **{f"rows_{gib}gib": largest_micro_batch(shape, setup, gib) for gib in (24, 80)}})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--heap", choices=["tuned", "default"], default="tuned",
                        help="tuned: the CLI's heap settings (freed buffers stay in the heap); default: glibc's "
                             "(buffers above 32 MB are mapped and returned on free, so RSS follows live bytes)")
    parser.add_argument("--measured", default="", help="a JSON file of the arms' results: re-read, not re-run")
    parser.add_argument("--table-only", type=lambda s: s in ("1", "True", "true"), nargs="?", const=True, default=False)
    args = parse_or_run_arm(parser, run_arm)
    if args is None:
        return
    payload = {}
    if not args.table_only:
        from pathlib import Path

        if args.measured:  # the arms' results of an earlier run (its "measured" JSON)
            results = json.loads(Path(args.measured).read_text())
        else:
            results = run_arms_interleaved(__file__, list(ARMS), args, Path("."))
        payload["measured"] = results
        rows, check = [], {}
        for arm, runs in results.items():
            median_of = lambda key: sorted(r[key] for r in runs)[len(runs) // 2] / 1024  # noqa: E731 (GiB)
            measured = median_of("step_mb")
            p = planned(arm, args)
            heap = p.cpu_heap  # the tuned heap's kept block: RSS, not allocated bytes
            step = p.step - (heap if args.heap == "default" else 0)
            row = {"plan_gib": round(step / 2**30, 3), "measured_gib": round(measured, 3),
                   "ratio": round(step / 2**30 / measured, 3)}
            if "live_mb" in runs[0]:  # CPU: the plan's live terms (no heap block) against the live bytes
                live = median_of("live_mb")
                row.update(plan_live_gib=round((p.step - heap) / 2**30, 3), live_gib=round(live, 3),
                           live_ratio=round((p.step - heap) / 2**30 / live, 3))
            check[arm] = row
            rows.append([arm, row["plan_gib"], row["measured_gib"], row["ratio"], row.get("plan_live_gib", "-"),
                         row.get("live_gib", "-"), row.get("live_ratio", "-"), p.phase,
                         round(min(min(r["seconds"]) for r in runs), 1)])
        print_table(f"step memory, GiB: LLaMA {LAYERS} x {HIDDEN}, V = {VOCAB:,}, {ROWS} x {SEQ} tokens, top-{TOP_K}, "
                    f"{args.precision} on {args.device}; measured = peak RSS (CUDA: max allocated), live = the "
                    f"profiler's peak of allocated bytes (CPU)",
                    ["arm", "plan", "measured", "plan/measured", "plan, live terms", "live", "plan/live",
                     "plan's peak phase", "step s"], rows)
        payload["check"] = check
        # the goal: the plan within 15% of what the allocator holds (CPU: the live bytes; CUDA: max allocated) in
        # every arm. CPU's RSS is reported beside it: what glibc keeps of freed blocks varies by run
        payload["within_goal"] = all(abs(r.get("live_ratio", r["ratio"]) - 1) <= GOAL for r in check.values())
    table = size_table()
    print_table(f"\nestimate from the plan: rows of {TABLE_SEQ} tokens per micro-batch per GPU that fit (bf16, "
                f"V = {VOCAB:,}; 0: does not fit)", ["student", "params (B)", "option", "24 GiB", "80 GiB"],
                [[r["student"], r["params_b"], r["option"], r["rows_24gib"], r["rows_80gib"]] for r in table])
    payload["fits"] = table
    emit_json(payload)


if __name__ == "__main__":
    main()
