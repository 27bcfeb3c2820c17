"""The memory plan: the peak memory of one rank's training step, from the model's config, without training.

Every term is bytes on one rank, in the steady state (the second step on: AdamW's moments exist). N is the
tokens of one micro-batch on one rank (micro-batch rows x seq_len), V the vocabulary, H the hidden size, P
the parameter count, W the ranks.

- weights: P x 4 (fp32 master weights). Under FSDP P x 4 / W, plus what is gathered: the root (embeddings,
  final norm, head: FSDP2 keeps it gathered from its forward to the end of its backward) and two decoder
  layers (the one computing and the one prefetched), in the parameter dtype of the precision policy.
- gradients: P x 4 (/ W under FSDP, where the head's full gradient exists during the backward). DDP adds its
  gradient buckets (another P x 4).
- optimizer: AdamW's two moments, 2 x P x 4 (/ W under FSDP).
- activations: what autograd keeps for the backward. Per decoder layer and token, a LLaMA layer (RMSNorm,
  attention through SDPA, gated MLP) keeps 8H + 2 H_kv + 4I + heads + 2 values (counted tensor by tensor with
  autograd's saved-tensor hooks: the norms' inputs and outputs, q, k, v after RoPE, the attention output and
  the o_proj input, the MLP's four I-wide tensors); the final norm 3H. In fp32 each value is 4 bytes; under
  bf16 the norms keep fp32 (4H values of 4 bytes) and the rest 2 bytes. With activation checkpointing a layer
  keeps only its input (H values), and the backward recomputes one layer at a time.
- loss: the unfused loss (--loss-chunk-tokens 0) holds the (N, V) logits and one (N, V) fp32 gradient buffer
  in its forward (that buffer is kept between steps and reused, `training/losses/fused.py`), plus a softmax slice
  of whole rows within 4M (CPU) or 64M (CUDA) values, one row at least; under bf16 the logits are bf16 and the backward adds a bf16 copy of the
  gradient. The fused head loss (`training/losses/linear.py`) with C tokens per chunk holds one (C, V) fp32
  buffer (the chunk's logits, their gradient written over them) and the loss body's (sub-slice, V) scratch,
  the (N, H) fp32 gradient of the hidden states and the head's (V, H) fp32 gradient, made during the forward
  (an fp32 copy of the head too where its parameters are bf16); C = -1 is its automatic chunk, the buffer and
  the scratch within `linear.CHUNK_BUDGET_BYTES` (on CPU at least 1.25 H tokens).
- CPU heap (`--device cpu`, the unfused loss): with the CLI's heap settings (`runtime/process.py`) glibc keeps
  the first step's freed (N, V) logits block, split by small allocations made during the step, so every
  later step's logits take a second block. Found by measuring (benchmarks/bench_plan.py: the live terms
  alone came to 0.75 of the measured RSS, the gap one logits block in both arms); a GPU's caching
  allocator reports live bytes (`max_memory_allocated`) without it. With the fused loss what glibc keeps
  varies by model and run (0.4 to 1.5 GiB measured) and is not counted: the plan is the live bytes there.
- autocast (bf16 or fp16 without FSDP) keeps a 2-byte copy of every matrix a linear layer uses, from the
  forward to the backward.

The peak is the persistent part (weights, optimizer, the reused loss buffer, DDP's buckets) plus the largest
of the step's phases: the loss's forward (activations + logits), the start of the backward (activations + the
head's gradient), the recompute of a checkpointed layer, and the optimizer step (every gradient, plus AdamW's
per-parameter temporaries). Not counted: the CUDA context and the allocator's slack (`RESERVE_GIB` in the fit),
the data loader's prefetched blocks (host memory), and teachers held by --online-teachers.

benchmarks/bench_plan.py checks the peak against the measured one on CPU; benchmarks/gpu_check.sh on a GPU.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GIB = 1 << 30
RESERVE_GIB = 1.0  # CUDA context and allocator slack, kept free when a batch is fitted into --gpu-memory
SLICE_VALUES = {"cpu": 1 << 22, "cuda": 1 << 26}  # the unfused loss's softmax slices (losses.CHUNK_ELEMENTS)
LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "cohere", "gemma", "gemma2"}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model, read from its config (parameters counted on the meta device)."""

    model_type: str
    params: int  # distinct parameters (a tied head counts once)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    root_params: int  # embeddings, final norm, head: everything outside the decoder layers
    layer_params: int  # the largest decoder layer
    head_params: int  # the output head's weight, V x H
    tied: bool  # the head is the input embedding matrix
    largest_param: int  # the largest single tensor (AdamW's temporaries are of its size)

    @classmethod
    def of(cls, hf_config) -> "ModelShape":
        import torch
        from transformers import AutoModelForCausalLM

        from .parallel import decoder_layers

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        layers = decoder_layers(model)
        params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
        in_layers = sum(p.numel() for layer in layers for p in layer.parameters())
        c = hf_config
        heads = int(c.num_attention_heads)
        hidden = int(c.hidden_size)
        return cls(
            model_type=str(c.model_type), params=params, layers=len(layers), hidden=hidden,
            intermediate=int(getattr(c, "intermediate_size", None) or 4 * hidden), heads=heads,
            kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(c, "head_dim", None) or hidden // heads), vocab=int(c.vocab_size),
            root_params=params - in_layers, layer_params=max(sum(p.numel() for p in l.parameters()) for l in layers),
            head_params=model.get_output_embeddings().weight.numel(),
            tied=model.get_output_embeddings().weight is model.get_input_embeddings().weight,
            largest_param=max(p.numel() for p in model.parameters()),
        )


@dataclass(frozen=True)
class Setup:
    """How the step runs: rows per micro-batch on one rank, and the options that change memory."""

    micro_rows: int
    seq_len: int
    world: int = 1
    fsdp: bool = False
    activation_checkpointing: bool = False
    precision: str = "bf16"  # fp32, bf16 or fp16 (resolved)
    loss_chunk_tokens: int = 0  # 0: the unfused loss; -1: the fused head loss's automatic chunk
    top_k: int = 32
    device: str = "cuda"


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes on one rank. `peak` = persistent + the largest phase (module docstring)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    loss: int  # the loss's buffers at their largest (its forward)
    other: int  # DDP's buckets, autocast's weight copies, FSDP's gathered parameters, the CPU heap's block
    batch: int  # the micro-batch's input ids and targets
    peak: int
    phase: str  # which phase sets the peak
    cpu_heap: int = 0  # of `other`: the block glibc keeps on CPU (the unfused loss), in RSS but not allocated

    @property
    def step(self) -> int:
        """What the step adds to a process that holds the model and the batch: the peak less both."""
        return self.peak - self.weights - self.batch

    def gib(self) -> dict:
        return {k: (round(v / GIB, 3) if isinstance(v, int) else v) for k, v in asdict(self).items()}


def layer_values(shape: ModelShape) -> tuple[int, int]:
    """(norm values, other values) autograd keeps per decoder layer and token (module docstring)."""
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    return 4 * h, 4 * h + 2 * kv + 4 * shape.intermediate + shape.heads + 2


def plan(shape: ModelShape, setup: Setup) -> MemoryPlan:
    n = setup.micro_rows * setup.seq_len  # tokens of one micro-batch on this rank
    v, h, p, w = shape.vocab, shape.hidden, shape.params, setup.world
    low = setup.precision in ("bf16", "fp16")
    act_bytes = 2 if low else 4
    fsdp = setup.fsdp and w > 1
    # ---- parameters, gradients, optimizer
    if fsdp:
        gathered = (shape.root_params + 2 * shape.layer_params) * act_bytes
        weights, grads, optimizer = math.ceil(p / w) * 4 + gathered, math.ceil(p / w) * 4, 2 * math.ceil(p / w) * 4
        other = gathered
        head_grad = shape.head_params * 4  # unsharded during the backward, reduce-scattered at its end
        casts = buckets = 0
    else:
        weights, grads, optimizer = p * 4, p * 4, 2 * p * 4
        head_grad = shape.head_params * 4
        buckets = p * 4 if w > 1 else 0
        # autocast caches a low-precision copy of each linear layer's weight (not the input embeddings)
        casts = (p - (0 if shape.tied else v * h)) * 2 if low else 0
        other = buckets + casts
    # ---- activations
    norm_values, rest_values = layer_values(shape)
    per_layer = n * (norm_values * 4 + rest_values * act_bytes)  # bytes of one layer's kept tensors
    final = n * 3 * h * 4  # the final norm's tensors: fp32 in every precision (RMSNorm computes in fp32)
    if setup.activation_checkpointing:
        residual_bytes = 2 if fsdp and low else 4  # the residual stream: fp32 under autocast
        activations = n * h * residual_bytes * shape.layers + final
    else:
        activations = per_layer * shape.layers + final
    # ---- loss
    if setup.loss_chunk_tokens != 0:
        chunk, sub = fused_chunk_tokens(setup.loss_chunk_tokens, v, setup.device, h)
        chunk = min(chunk, n)
        head_copy = shape.head_params * 4 if fsdp and low else 0  # an fp32 copy of bf16 head parameters
        # the head's gradient is made here, in the forward: it is the one the backward hands to the head; the
        # chunk's (C, V) fp32 buffer (the logits, then their gradient) and the loss body's (sub-slice, V) scratch
        loss_forward = (chunk + min(sub, chunk)) * v * 4 + n * h * 4 + head_grad + head_copy
        loss_backward, loss_kept = 0, 0
    else:
        # one softmax slice of whole rows, at least one row (losses._row_slices)
        slice_rows = min(max(1, SLICE_VALUES.get(setup.device, SLICE_VALUES["cpu"]) // (setup.seq_len * v)),
                         setup.micro_rows)
        slices = slice_rows * setup.seq_len * v * 4
        loss_kept = n * v * 4  # the gradient buffer, reused from step to step
        loss_forward = n * v * (2 if low else 4) + slices
        loss_backward = n * v * 2 if low else 0  # the gradient cast to the logits' dtype
    targets = n * setup.top_k * (8 + 4) + n * 8  # ids, probabilities, input ids
    heap = n * v * (2 if low else 4) if setup.device == "cpu" and setup.loss_chunk_tokens == 0 else 0
    other += heap
    # ---- phases
    persistent = weights + optimizer + buckets + loss_kept + targets + heap
    phases = {
        "loss forward": activations + casts + loss_forward,
        "backward start": activations + casts + loss_backward + head_grad + n * h * 4,
        "optimizer step": grads + 2 * shape.largest_param * 4,
    }
    if setup.activation_checkpointing:
        phases["layer recompute"] = activations + per_layer + casts + head_grad + n * h * 4 * 2
    phase = max(phases, key=phases.get)
    return MemoryPlan(weights=weights, gradients=grads, optimizer=optimizer, activations=activations,
                      loss=loss_kept + loss_forward, other=other, batch=targets, peak=persistent + phases[phase],
                      phase=phase, cpu_heap=heap)


def fused_chunk_tokens(loss_chunk_tokens: int, vocab: int, device: str = "cpu", hidden: int = 0) -> tuple[int, int]:
    """(tokens per chunk, rows per sub-slice) of the fused head loss: the chunk as set, or automatic (-1):
    `linear.auto_chunk_tokens`, what the loss itself runs (on CPU at least 1.25 x `hidden`)."""
    from .losses.linear import auto_chunk_tokens, sub_slice_rows

    chunk = loss_chunk_tokens if loss_chunk_tokens > 0 else auto_chunk_tokens(vocab, device=device,
                                                                              hidden_size=hidden)
    return chunk, sub_slice_rows(vocab, device)


def largest_micro_batch(shape: ModelShape, setup: Setup, gpu_gib: float, limit: int = 1 << 16) -> int:
    """The most rows per micro-batch on one rank whose peak, plus RESERVE_GIB, fits `gpu_gib` (0: none fits)."""
    budget = (gpu_gib - RESERVE_GIB) * GIB

    def fits(rows: int) -> bool:
        return plan(shape, _with_rows(setup, rows)).peak <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _with_rows(setup: Setup, rows: int) -> Setup:
    from dataclasses import replace

    return replace(setup, micro_rows=rows)


def is_llama_like(shape: ModelShape) -> bool:
    """Whether the activation count (measured on LLaMA's layer) describes this architecture's layer."""
    return shape.model_type in LLAMA_LIKE


def model_config(config):
    """The transformers config a PlanConfig names: the preset at --vocab-size, or --init-from's config.json."""
    import json
    from pathlib import Path

    from transformers import AutoConfig

    from ..errors import LogitcacheError
    from ..teachers.models import hf_config
    from ..teachers.presets import get_preset

    if config.init_from is None:
        if not config.vocab_size:
            raise LogitcacheError("plan: give --vocab-size with a preset (or --init-from a config.json)")
        return hf_config(get_preset(config.preset), config.vocab_size)
    path = Path(config.init_from)
    config_file = path if path.is_file() else path / "config.json"
    try:
        raw = json.loads(config_file.read_text())
        hf = AutoConfig.for_model(raw.pop("model_type"), **raw)
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
        raise LogitcacheError(f"--init-from {config_file}: not a transformers config ({exc})") from None
    if config.vocab_size:
        hf.vocab_size = config.vocab_size
    return hf


def memory_plan(config) -> dict:
    """The plan of a PlanConfig, as set and with checkpointing and FSDP toggled: per-rank GiB by term, the
    phase that sets the peak, and with --gpu-memory the most rows per micro-batch that fit."""
    shape = ModelShape.of(model_config(config))
    precision = config.precision if config.precision != "auto" else ("bf16" if config.device == "cuda" else "fp32")
    base = Setup(micro_rows=config.batch_size // (config.world_size * config.grad_accum), seq_len=config.seq_len,
                 world=config.world_size, fsdp=config.fsdp, activation_checkpointing=config.activation_checkpointing,
                 precision=precision, loss_chunk_tokens=config.loss_chunk_tokens, top_k=config.top_k,
                 device=config.device)
    from dataclasses import replace

    variants = {}
    for fsdp in ((False, True) if config.world_size > 1 else (False,)):
        for checkpointed in (False, True):
            name = ("FSDP" if fsdp else "DDP" if config.world_size > 1 else "one GPU") + \
                (" + checkpointing" if checkpointed else "")
            setup = replace(base, fsdp=fsdp, activation_checkpointing=checkpointed)
            result = plan(shape, setup).gib() | {"as_set": fsdp == config.fsdp and checkpointed == config.activation_checkpointing}
            if config.gpu_memory:
                rows = largest_micro_batch(shape, setup, config.gpu_memory)
                result |= {"max_micro_rows": rows, "max_batch_size": rows * config.world_size * config.grad_accum}
            variants[name] = result
    return {"model": asdict(shape), "precision": precision, "micro_rows": base.micro_rows,
            "tokens_per_micro_batch": base.micro_rows * config.seq_len, "gpu_memory_gib": config.gpu_memory,
            "reserve_gib": RESERVE_GIB, "llama_like": is_llama_like(shape), "variants": variants}
