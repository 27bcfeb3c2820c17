"""`logitcache plan`: the per-GPU memory of a train-student configuration, estimated without training."""
from logitcache.config import PlanConfig

from . import common as C
from .options import config_command

TERMS = ["weights", "gradients", "optimizer", "activations", "loss", "other", "peak"]
# the plan counts live bytes; with the fused loss on CPU the RSS is larger by what glibc keeps of freed blocks,
# which varies by model and run (docs/benchmarks.md, The memory plan)
CPU_HEAP = ("; on CPU with the fused loss the process's RSS runs above this peak by freed blocks glibc keeps "
            "(0.4 to 1.5 GiB in docs/benchmarks.md's runs)")


@config_command(PlanConfig)
def command(config: PlanConfig, json_out: C.JsonOut = None) -> None:
    """Weights, gradients, AdamW state, activations (with and without checkpointing), the loss's buffers and
    the peak, per rank (under FSDP: sharded), for the model and batch given; with --gpu-memory the largest
    batch that fits. An estimate (logitcache/training/plan.py says what it counts)."""
    from logitcache.training.plan import memory_plan

    C.json_to_stdout(json_out)
    result = memory_plan(config)
    variants = result["variants"]
    rows = [[term] + [v[term] for v in variants.values()] for term in TERMS]
    rows.append(["peak is set by"] + [v["phase"] for v in variants.values()])
    if config.gpu_memory:
        rows.append([f"max batch in {config.gpu_memory:g} GiB"] + [v["max_batch_size"] for v in variants.values()])
    model = result["model"]
    C.print_table(f"per-GPU memory, GiB: {model['model_type']} {model['params'] / 1e9:.2f}B params, "
                  f"V = {model['vocab']:,}, {result['tokens_per_micro_batch']:,} tokens per micro-batch per rank, "
                  f"{result['precision']}",
                  ["", *[f"{name}{' (as set)' if v['as_set'] else ''}" for name, v in variants.items()]], rows,
                  caption=f"an estimate; a GPU also needs ~{result['reserve_gib']:g} GiB for its context and the "
                          "allocator" + ("" if result["llama_like"] else
                                         f"; activations counted as a LLaMA layer's ({model['model_type']} differs)")
                          + (CPU_HEAP if config.device == "cpu" and config.loss_chunk_tokens != 0 else ""))
    C.write_json(json_out, result)
