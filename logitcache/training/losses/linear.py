"""The fused head loss: alpha * CE + (1 - alpha) * T^2 * KL from the student's final hidden states and its
output embedding, in chunks of tokens, never holding (B, T, V) logits or their gradient
(docs/architecture.md, "Losses").

Per chunk of C tokens: the logits h W^T + b in fp32 (C, V), the loss terms and d loss / d logits
(`fused.slice_loss_grad`, the body the fused loss on materialised logits runs), then d loss / d h (C, H)
and the head's gradients, accumulated in (V, H) and (V,). The gradients are made during the forward and
handed out by backward, so the head's matmuls run once each, as in an unfused step.

The hidden states come through the model's own forward (`hidden_states_of`): the head's forward is
replaced, for that call only, by one that records its input and returns no logits, so wrappers' hooks
(DDP, FSDP) run as usual. Post-processing after the head (Gemma-2's final soft-capping, Granite's and
Cohere's logit scaling) is read from the config and applied here; `check_head` compares the result with
the model's own logits once, and any other post-processing is refused for fusing.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from .fused import POW_ROUTE_MAX_T, flat_targets, kl_count, slice_loss_grad

# The automatic chunk: its (C, V) fp32 buffer (the logits, then their gradient written over them) and the loss
# body's scratch rows within this budget together. A chunk costs two passes over the whole (V, H) weight that
# do not shrink with C (MKL packs it for the logits' matmul and again for d h's, per call) and one rank-C
# update of the (V, H) gradient, so larger chunks are faster: 1,014 tokens at V = 128,256, 508 at 256,000 (on
# CPU; CUDA's larger sub-slices leave 981 and 492).
CHUNK_BUDGET_BYTES = 512 << 20
# On CPU the automatic chunk is at least this many times the hidden size H, in tokens: its buffer then holds the
# (V, H) fp32 gradient that the input embedding's backward allocates after the loss has freed the buffer, with a
# quarter to spare for the backward's other allocations meanwhile. glibc (with the CLI's heap settings) keeps a
# freed block resident; one too small for that gradient stays unused and the gradient takes new memory beside
# it, so the step's peak would grow by it (docs/benchmarks.md: at V = 256,000 and H = 512, 508 tokens gave a
# step of 1.9 or 2.4 GB from run to run, 640 tokens 2.0 GB in every run).
CPU_CHUNK_PER_HIDDEN = 1.25
# The loss body (`slice_loss_grad`) runs over sub-slices of a chunk's rows: its second (rows, V) buffer and
# its temporaries are this many fp32 values, not another (C, V) buffer. On CPU a sub-slice stays in cache
# across the body's passes over it; on a GPU it is still large enough for full kernels.
SUB_SLICE_VALUES = {"cpu": 1 << 22, "cuda": 1 << 23}


def sub_slice_rows(vocab_size: int, device: str = "cpu") -> int:
    """Rows of one loss-body sub-slice."""
    return max(1, SUB_SLICE_VALUES.get(device, SUB_SLICE_VALUES["cpu"]) // vocab_size)


def scratch_slices(temperature: float = 2.0, logit_softcap: float | None = None) -> int:
    """(sub-slice, V) fp32 tensors the loss body holds besides the chunk's buffer: q_T (T != 1; the pow
    route, q_1 written into the chunk's buffer); with a soft cap also q_1, as the capped logits stay for the
    cap's derivative; above POW_ROUTE_MAX_T q_1, z / T and its softmax besides."""
    return 4 if temperature > POW_ROUTE_MAX_T else 2 if logit_softcap is not None else 1


def auto_chunk_tokens(vocab_size: int, budget_bytes: int = CHUNK_BUDGET_BYTES, device: str = "cpu",
                      temperature: float = 2.0, logit_softcap: float | None = None, hidden_size: int = 0) -> int:
    """Tokens per chunk whose fp32 (C, V) buffer and the loss body's (sub-slice, V) tensors (scratch_slices)
    fit `budget_bytes` together; on CPU at least CPU_CHUNK_PER_HIDDEN x `hidden_size`."""
    scratch = scratch_slices(temperature, logit_softcap) * sub_slice_rows(vocab_size, device)
    chunk = max(1, budget_bytes // (4 * vocab_size) - scratch)
    return max(chunk, math.ceil(CPU_CHUNK_PER_HIDDEN * hidden_size)) if device == "cpu" else chunk


@dataclass(frozen=True)
class Head:
    """A student's output head as the fused loss computes it: logits = softcap * tanh(scale * (h W^T + b) /
    softcap), or scale * (h W^T + b) without a softcap."""

    module: nn.Linear
    logit_scale: float = 1.0
    logit_softcap: float | None = None


def linear_head(model: nn.Module) -> tuple[Head | None, str]:
    """The model's head for the fused loss, or (None, why not). `model` unwrapped (no DDP `module`)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        return None, f"its output embedding is {type(head).__name__}, not a plain torch.nn.Linear"
    config = getattr(model, "config", None)
    scale, softcap = 1.0, getattr(config, "final_logit_softcapping", None)  # Gemma-2, Gemma-3
    if getattr(config, "logits_scaling", None):  # Granite: logits / logits_scaling
        scale /= float(config.logits_scaling)
    if getattr(model, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
        scale *= float(model.logit_scale)
    return Head(head, scale, float(softcap) if softcap else None), ""


@contextlib.contextmanager
def hidden_states_of(head: nn.Module):
    """Within the block, `head` returns (..., 0) empty logits and records its input and parameters in the
    dict it yields (hidden (B, T, H), weight (V, H), bias (V,) or None): the model's forward (through any
    wrapper) then ends at the head. The parameters are read at call time, as a sharding wrapper presents
    them then."""
    got: dict = {}

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        got.update(hidden=hidden, weight=head.weight, bias=head.bias)
        return hidden.new_zeros(hidden.shape[:-1] + (0,))

    head.forward = forward
    try:
        yield got
    finally:
        del head.forward


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, logit_scale: float = 1.0,
                logit_softcap: float | None = None) -> torch.Tensor:
    """The logits the fused loss computes, in fp32 (..., V): its definition, for checks and references."""
    z = hidden.float() @ weight.float().t()
    if bias is not None:
        z = z + bias.float()
    z = z * logit_scale
    return z if logit_softcap is None else logit_softcap * torch.tanh(z / logit_softcap)


CHECK_TOKENS = 8  # check_head's prefix: its two (1, 8, V) logit tensors stay small at any vocabulary


def check_head(model, head: Head, input_ids: torch.Tensor) -> str:
    """'' when the head's logits, computed as the fused loss does, equal the model's own on the first
    CHECK_TOKENS tokens of the first row (a forward without gradients); else why not. Catches
    post-processing the config does not name."""
    got: dict = {}
    hook = head.module.register_forward_hook(lambda mod, args, out: got.update(hidden=args[0]))
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids[:1, :CHECK_TOKENS]).logits.float()  # (1, T', V)
    finally:
        hook.remove()
    if "hidden" not in got or logits.shape[:-1] != got["hidden"].shape[:-1]:
        return "the model's forward does not end at its output embedding"
    mine = head_logits(got["hidden"], head.module.weight, head.module.bias, head.logit_scale, head.logit_softcap)
    # the model's head may run in bf16 or fp16 (autocast, or such weights): compare at that precision
    low = torch.finfo(got["hidden"].dtype).eps > 1e-6 or torch.is_autocast_enabled()
    tol = (2e-2 if low else 1e-4) * (1.0 + logits.abs().max())
    err = (mine - logits).abs().max()
    return "" if err <= tol else f"its logits are post-processed after the head (max difference {float(err):.3g})"


class _LinearDistill(torch.autograd.Function):
    """(loss, kl, ce) from hidden (N, H) and the head, chunk by chunk; the gradients of hidden, weight and
    bias are made in the forward and returned by backward (scaled by the loss's incoming gradient)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, next_ids, ce_w, targets, temperature, alpha, count, n_ce, chunk,
                logit_scale, logit_softcap):
        n, v = hidden.shape[0], weight.shape[0]
        w32 = weight.detach().float()  # (V, H)
        h = hidden.detach()
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)  # (N, H)
        grad_w = torch.zeros(w32.shape, dtype=torch.float32, device=w32.device) if n == 0 else \
            torch.empty(w32.shape, dtype=torch.float32, device=w32.device)  # (V, H), written by the first chunk
        grad_b = None if bias is None else torch.zeros(v, dtype=torch.float32, device=w32.device)
        b32 = bias.detach().float() if bias is not None else None
        z = torch.empty((min(chunk, n), v), dtype=torch.float32, device=hidden.device)  # (C, V), reused
        sub = min(sub_slice_rows(v, hidden.device.type), z.shape[0])
        g = torch.empty((sub, v), dtype=torch.float32, device=hidden.device)  # (S, V): the loss body's scratch
        kl_sum = ce_sum = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            hc = h[sl].float()  # (C, H)
            zc = z[: hc.shape[0]]
            if b32 is not None:
                torch.addmm(b32, hc, w32.t(), out=zc)
            else:
                torch.mm(hc, w32.t(), out=zc)
            if logit_scale != 1.0:
                zc.mul_(logit_scale)
            if logit_softcap is not None:
                zc.div_(logit_softcap).tanh_().mul_(logit_softcap)
            for s0 in range(0, zc.shape[0], sub):  # the gradient replaces the logits, sub-slice by sub-slice
                ss, rows = slice(s0, min(s0 + sub, zc.shape[0])), slice(start + s0, min(start + s0 + sub, sl.stop))
                zs, gs = zc[ss], g[: ss.stop - s0]
                # the gradient is written over zs unless the soft-cap's derivative below reads it
                kl, ce = slice_loss_grad(zs, gs, next_ids[rows], ce_w[rows],
                                         None if targets is None else targets.rows(rows), temperature,
                                         into_z=logit_softcap is None)
                kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
                if logit_softcap is not None:  # d cap tanh(u / cap) / d u = 1 - tanh^2
                    zs.div_(logit_softcap).square_().neg_().add_(1.0).mul_(gs)
            if logit_scale != 1.0:
                zc.mul_(logit_scale)
            torch.mm(zc, w32, out=grad_h[sl])  # (C, H)
            if start == 0:  # written, not added: no pass to zero the (V, H) buffer first
                torch.mm(zc.t(), hc, out=grad_w)  # (V, H)
                if grad_b is not None:
                    torch.sum(zc, 0, out=grad_b)
            else:
                grad_w.addmm_(zc.t(), hc)
                if grad_b is not None:
                    grad_b += zc.sum(0)
        ce = ce_sum / n_ce
        kl = temperature**2 * kl_sum / count if targets is not None else torch.zeros_like(ce)
        ctx.grads = (grad_h.to(hidden.dtype), grad_w.to(weight.dtype),
                     None if grad_b is None else grad_b.to(bias.dtype))
        ctx.mark_non_differentiable(kl, ce)
        return alpha * ce + (1.0 - alpha) * kl, kl, ce

    @staticmethod
    def backward(ctx, grad_loss, grad_kl, grad_ce):
        grad_h, grad_w, grad_b = ctx.grads
        del ctx.grads  # the only references: autograd may take the weight's as .grad without a copy
        # the loop calls backward on loss / grad_accum; skip the passes when that factor is 1 (CPU only:
        # reading it on a GPU would synchronise)
        if grad_loss.device.type != "cpu" or float(grad_loss) != 1.0:
            grad_h, grad_w = grad_h * grad_loss, grad_w * grad_loss
            grad_b = None if grad_b is None else grad_b * grad_loss
        return (grad_h, grad_w, grad_b) + (None,) * 10


def fused_linear_distill(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         input_ids: torch.Tensor, ids: torch.Tensor | None, probs: torch.Tensor | None,
                         weights: torch.Tensor | None, mask: torch.Tensor | None, *, alpha: float,
                         temperature: float, tail: str = "bucket", reduction: str = "token", logit_scale: float = 1.0,
                         logit_softcap: float | None = None, chunk_tokens: int = 0):
    """(loss, kl, ce) as `distill_loss` on the logits `head_logits(hidden, weight, bias, ...)` gives, from
    hidden (B, T, H), weight (V, H), bias (V,) or None; ids/probs/weights (B, T, K) (None when alpha = 1: kl
    is then None); mask (B, T) or None. `chunk_tokens` tokens at a time (0: `auto_chunk_tokens`)."""
    b, t, _ = hidden.shape
    distil = ids is not None
    next_ids, ce_w, targets = flat_targets(input_ids, ids, probs, weights, mask, float(alpha), float(temperature),
                                           tail, reduction)
    chunk = chunk_tokens if chunk_tokens > 0 else auto_chunk_tokens(
        weight.shape[0], device=hidden.device.type, temperature=temperature, logit_softcap=logit_softcap,
        hidden_size=weight.shape[1])
    loss, kl, ce = _LinearDistill.apply(
        hidden.reshape(b * t, -1), weight, bias, next_ids, ce_w, targets, float(temperature), float(alpha),
        kl_count(input_ids, mask, reduction), max(1, b * (t - 1)), int(chunk), float(logit_scale),
        None if logit_softcap is None else float(logit_softcap))
    return loss, (kl if distil else None), ce

