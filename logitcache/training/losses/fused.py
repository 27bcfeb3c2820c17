"""The fused losses on materialised (B, T, V) logits: d loss / d logits written during the forward
(docs/architecture.md, "Losses"). Equal to the references in reference.py (tests/test_losses.py)."""
from __future__ import annotations

import torch

from .reference import _bucket_kl


# The fused losses below write d loss / d logits in their forward into one (B, T, V) buffer and
# return it from backward. At T = 1 that buffer is the softmax itself; at T != 1 both q_1 and
# q_T are needed, so they are made a few rows at a time (~4M entries, which stay in cache across
# the passes made over them) and only the gradient is kept whole. On GPUs larger slices (fewer
# kernel launches per slice) still bound the transient memory.
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
# Above this temperature q_T is computed by its own softmax: q_1^(1/T) loses entries that
# underflow in q_1 (z - max < -103), which carry up to exp(-103 / T) of q_T's mass per entry.
POW_ROUTE_MAX_T = 4.0


# One reused (B, T, V) gradient buffer per shape: a fresh 65 MB tensor every step costs ~16k
# page faults on CPU (~8% of a small student's step here). Only handed out when the logits are a
# model output (a leaf's .grad could keep the buffer) and no earlier loss still holds it.
_WORKSPACE: dict[tuple, torch.Tensor] = {}
_IN_USE: set[int] = set()


def _gradient_buffer(logits: torch.Tensor) -> torch.Tensor:
    key = (tuple(logits.shape), logits.device)
    buf = _WORKSPACE.get(key)
    if logits.grad_fn is None or (buf is not None and id(buf) in _IN_USE):
        return torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    if buf is None:
        _WORKSPACE.clear()  # a new shape (the last, smaller batch of an epoch, or eval): keep one buffer
        buf = _WORKSPACE[key] = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    _IN_USE.add(id(buf))
    return buf


def _release(buf: torch.Tensor) -> None:
    _IN_USE.discard(id(buf))


def _row_slices(logits: torch.Tensor) -> list[slice]:
    b, t, v = logits.shape
    rows = max(1, CHUNK_ELEMENTS.get(logits.device.type, CHUNK_ELEMENTS["cpu"]) // (t * v))
    return [slice(i, min(i + rows, b)) for i in range(0, b, rows)]


def _scale_saved_grad(grad: torch.Tensor, grad_loss: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # the loop calls backward on loss / grad_accum; skip a full pass when that factor is 1 (CPU only:
    # reading it on a GPU would synchronise)
    if grad_loss.device.type != "cpu" or float(grad_loss) != 1.0:
        grad = grad.mul_(grad_loss)
    _release(grad)  # consumed by the layers below before the next forward can start
    return grad.to(dtype)


class _FusedDistill(torch.autograd.Function):
    """alpha * CE + (1 - alpha) * T^2 * KL over K ids + tail bucket, the gradient written in the
    forward into one (B, T, V) buffer (autograd's version keeps log-softmaxes and takes a logsumexp
    backward, a gather backward into zeros and a slice backward). Returns (loss, kl, ce); only the
    loss carries a gradient.

    With q = softmax(z / T): d KL / d s_v = q_v - p_v for kept ids and q_v (1 - p_tail / q_tail) for
    the others (s = z / T); d CE / d z = q_1 - onehot(next token). q_T = q_1^(1/T) / sum: a sqrt or
    pow and a sum instead of a divide and a second softmax.
    """

    @staticmethod
    def forward(ctx, logits, topk_ids, topk_probs, next_ids, temperature, alpha, kl_count, mask):
        # mask (B, T) float32 or None: 1 where the position has a teacher target; kl_count counts them (a
        # 0-d tensor then, so no device sync) or is the unmasked count
        a = (1.0 - alpha) * temperature / kl_count  # T^2 / count, times 1 / T from s = z / T
        b = alpha / next_ids.numel()
        grad = _gradient_buffer(logits)  # (B, T, V) float32
        kl_sum = ce_sum = logits.new_zeros((), dtype=torch.float32)
        for rows in _row_slices(logits):
            z, ids, nxt, g = logits[rows].detach(), topk_ids[rows], next_ids[rows].unsqueeze(-1), grad[rows]
            # at T = 1 the softmax is written into the gradient buffer and becomes the gradient in place
            q1 = torch.softmax(z, dim=-1, dtype=torch.float32, out=g) if temperature == 1.0 else \
                torch.softmax(z, dim=-1, dtype=torch.float32)  # (R, T, V)
            q1_next = q1[:, :-1].gather(-1, nxt)  # (R, T-1, 1)
            ce_sum = ce_sum - torch.log(q1_next.clamp(min=1e-30)).sum()
            if temperature == 1.0:
                qt, norm = q1, None
            elif temperature <= POW_ROUTE_MAX_T:
                qt = torch.sqrt(q1, out=g) if temperature == 2.0 else torch.pow(q1, 1.0 / temperature, out=g)
                norm = qt.sum(-1, keepdim=True)  # (R, T, 1)
            else:
                qt = g.copy_(torch.softmax(z / temperature, dim=-1, dtype=torch.float32))
                norm = None
            q_kept = qt.gather(-1, ids)  # (R, T, K)
            if norm is not None:
                q_kept = q_kept / norm
            p = topk_probs[rows].float().clamp(min=0)  # (R, T, K)
            kl, tail_factor = _bucket_kl(torch.log(q_kept.clamp(min=1e-30)), p)
            a_pos = a if mask is None else a * mask[rows]  # (R, T): no KL gradient where no target
            if mask is not None:
                kl = torch.where(mask[rows] > 0, kl, torch.zeros_like(kl))
            kl_sum = kl_sum + kl.sum()
            scale = (a_pos * tail_factor).unsqueeze(-1)  # (R, T, 1)
            kept_grad = (a_pos.unsqueeze(-1) if mask is not None else a) * (q_kept - p)  # (R, T, K)
            if norm is not None:
                scale = scale / norm
            if qt is q1:  # T = 1: both terms from one softmax
                scale[:, :-1] += b
                kept_grad[:, :-1] += b * q_kept[:, :-1]
                g.mul_(scale)
            else:
                g.mul_(scale)
                kept_grad[:, :-1] += b * q1[:, :-1].gather(-1, ids[:, :-1])
                g[:, :-1].add_(q1[:, :-1], alpha=b)
            # added as differences from the tail gradient already there, and none at p = 0 slots (the tail's):
            # a padding id repeated, or equal to a kept id, leaves every id its own gradient
            g.scatter_add_(-1, ids, torch.where(p > 0, kept_grad - g.gather(-1, ids), torch.zeros_like(kept_grad)))
            g[:, :-1].scatter_add_(-1, nxt, torch.full(nxt.shape, -b, dtype=g.dtype, device=g.device))
            del q1, qt
        kl = temperature**2 * kl_sum / kl_count
        ce = ce_sum / next_ids.numel()
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(kl, ce)
        return alpha * ce + (1.0 - alpha) * kl, kl, ce

    @staticmethod
    def backward(ctx, grad_loss, grad_kl, grad_ce):
        (grad,) = ctx.saved_tensors
        return _scale_saved_grad(grad, grad_loss, ctx.logits_dtype), None, None, None, None, None, None, None


def fused_distill_loss(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor,
                       input_ids: torch.Tensor, temperature: float, alpha: float, reduction: str = "token",
                       mask: torch.Tensor | None = None):
    """(loss, kl, ce) = alpha * next_token_ce + (1 - alpha) * sparse_kl(..., tail="bucket", mask=mask), with
    kl and ce detached for logging: the training path (about a third of autograd's (B, T, V) passes).
    `mask` (B, T): 1 where the position has a teacher target (module docstring)."""
    b, t = topk_ids.shape[:2]
    if mask is None:
        count = b if reduction == "paper" else b * t
    else:
        mask = mask.to(torch.float32)
        count = torch.tensor(float(b), device=mask.device) if reduction == "paper" else mask.sum().clamp(min=1.0)
    next_ids = input_ids[:, 1:].contiguous()
    return _FusedDistill.apply(student_logits, topk_ids, topk_probs, next_ids, float(temperature), float(alpha),
                               count, mask)


class _FusedNextTokenCE(torch.autograd.Function):
    """Mean next-token CE, the gradient (q - onehot) / count written in place into the softmax in the
    forward. F.cross_entropy on a sliced (B, T-1, V) view copies the slice, keeps log-probs, and
    builds a one-hot gradient: about twice the passes over (B, T, V)."""

    @staticmethod
    def forward(ctx, logits, next_ids):
        grad = torch.softmax(logits.detach(), dim=-1, dtype=torch.float32, out=_gradient_buffer(logits))  # (B, T, V)
        nxt = next_ids.unsqueeze(-1)  # (B, T-1, 1)
        ce = -torch.log(grad[:, :-1].gather(-1, nxt).clamp(min=1e-30)).mean()
        b = 1.0 / next_ids.numel()
        grad.mul_(b)
        grad[:, -1].zero_()  # the last position predicts nothing
        grad[:, :-1].scatter_add_(-1, nxt, torch.full(nxt.shape, -b, dtype=grad.dtype, device=grad.device))
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return ce

    @staticmethod
    def backward(ctx, grad_ce):
        (grad,) = ctx.saved_tensors
        return _scale_saved_grad(grad, grad_ce, ctx.logits_dtype), None


def fused_next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Equal to `train.next_token_ce` (positions 0..T-2 predict tokens 1..T-1), for training."""
    return _FusedNextTokenCE.apply(logits, input_ids[:, 1:].contiguous())
