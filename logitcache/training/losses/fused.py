"""The fused losses on materialised (B, T, V) logits: d loss / d logits written during the forward
(docs/architecture.md, "Losses"). Equal to the references in reference.py (tests/test_losses.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference import _bucket_kl, _renormalized_kl


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


def slice_loss_grad(z: torch.Tensor, g: torch.Tensor, next_ids: torch.Tensor, ce_w: torch.Tensor,
                    targets: SliceTargets | None, temperature: float,
                    into_z: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss terms of N positions and their gradient with respect to the logits: the per-slice body of
    every fused loss (over (B, T, V) logits here, over a chunk of tokens in linear.py).

    z (N, V) logits; g (N, V) float32, overwritten with d loss / d z; next_ids (N,) the token each position
    predicts; ce_w (N,) the CE weight of each position (alpha / number of CE positions, 0 where no token
    follows). Returns (kl_sum, ce_sum): T^2-less KL summed over the positions `targets.kl_rows` keeps and CE
    summed over the positions with a next token (ce_w > 0 or alpha = 0: ce_rows).

    With q = softmax(z / T), s = z / T: bucket d KL / d s_v = q_v - p_v at kept ids, q_v (1 - p_tail / q_tail)
    off them; sampled (sum_i w_i (log p_i - log q_i)) W q_v - sum_i w_i [v = i], W = sum_i w_i;
    renormalised r_k P - p_k / P over the kept ids (r: the student renormalised there, P = sum p / sum p,
    1 or 0), 0 off them; CE d / d z = q_1 - onehot(next). q_T = q_1^(1/T) / sum: a sqrt or pow and a sum
    instead of a second softmax. At T = 1 the softmax is written into the gradient's buffer and becomes the
    gradient in place. With `into_z` (z is the caller's own logits buffer, not needed afterwards) the gradient
    is written over z and g holds only q_T (T != 1): the caller needs neither a copy nor a second buffer at
    T = 1, and at other T, q_1 is written into z, so a slice holds two (N, V) buffers, not three.
    """
    t = targets
    nxt = next_ids.unsqueeze(-1)  # (N, 1)
    in_place = temperature == 1.0 or t is None or t.tail == "renormalize"  # only q_1 is needed over V
    # the renormalised KL reads the logits at the kept ids, which the softmax may overwrite
    kept = z.gather(-1, t.ids).float() / temperature if t is not None and t.tail == "renormalize" else None  # (N, K)
    out = z if into_z else g  # the gradient's buffer
    # q_T's own softmax (T > POW_ROUTE_MAX_T) reads z after q_1 is made
    into = out if in_place else z if into_z and temperature <= POW_ROUTE_MAX_T else None
    q1 = torch.softmax(z, dim=-1, dtype=torch.float32, out=into) if into is not None else \
        torch.softmax(z, dim=-1, dtype=torch.float32)  # (N, V)
    ce_rows = t.ce_rows if t is not None else ce_w > 0
    ce_sum = -torch.where(ce_rows, torch.log(q1.gather(-1, nxt).squeeze(-1).clamp(min=1e-30)), 0.0).sum()
    cw = ce_w.unsqueeze(-1)  # (N, 1)
    if t is None or t.tail == "renormalize":
        out.mul_(cw)  # CE's q_1 part; renormalised KL has no gradient off the kept ids
        kl_sum = out.new_zeros(())
        if t is not None:
            valid = t.weights > 0 if t.weights is not None else t.p > 0
            kl = _renormalized_kl(kept, t.p, valid)  # (N,)
            lse = torch.logsumexp(kept.masked_fill(~valid, float("-inf")), dim=-1, keepdim=True)
            r = torch.where(valid, torch.exp(kept - lse), 0.0)  # (N, K); no NaN kept where no slot is valid
            p = torch.where(valid, t.p, 0.0)
            p_n = p / p.sum(-1, keepdim=True).clamp(min=1e-30)
            out.scatter_add_(-1, t.ids, t.a.unsqueeze(-1) * (r * p_n.sum(-1, keepdim=True) - p_n))
            kl_sum = _masked_sum(kl, t.kl_rows)
        out.scatter_add_(-1, nxt, -cw)
        return kl_sum, ce_sum
    if temperature == 1.0:
        qt, norm = q1, None
    elif temperature <= POW_ROUTE_MAX_T:
        qt = torch.sqrt(q1, out=g) if temperature == 2.0 else torch.pow(q1, 1.0 / temperature, out=g)
        norm = qt.sum(-1, keepdim=True)  # (N, 1)
    else:
        qt, norm = g.copy_(torch.softmax(z / temperature, dim=-1, dtype=torch.float32)), None
    q_kept = qt.gather(-1, t.ids)  # (N, K)
    if norm is not None:
        q_kept = q_kept / norm
    log_q = torch.log(q_kept.clamp(min=1e-30))
    a = t.a.unsqueeze(-1)  # (N, 1): no KL gradient where no target
    if t.weights is not None:  # sampled: the importance-weighted estimate
        w = torch.where((t.weights > 0) & (t.p > 0), t.weights.float(), 0.0)  # drawn and not rounded to 0
        kl = (w * (torch.log(t.p.clamp(min=1e-30)) - log_q)).sum(-1)
        scale = a * w.sum(-1, keepdim=True)  # (N, 1)
        kept_grad = -a * w  # (N, K), added to the q_v * scale every id has
    else:
        kl, tail_factor = _bucket_kl(log_q, t.p)
        scale = a * tail_factor.unsqueeze(-1)
        kept_grad = a * (q_kept - t.p)  # (N, K), replacing the tail's gradient at p > 0 slots
    if norm is not None:
        scale = scale / norm
    if qt is q1:  # T = 1: both terms from one softmax (q_1 is in out)
        out.mul_(scale + cw)
        if t.weights is None:
            kept_grad = kept_grad + cw * q_kept
    else:
        if t.weights is None:
            kept_grad = kept_grad + cw * q1.gather(-1, t.ids)
        g.mul_(scale)
        # q_T scale + q_1 cw, the same expression either way: into z (q_1 is z itself, or above
        # POW_ROUTE_MAX_T a tensor of its own) or into g (q_T)
        torch.addcmul(g, q1, cw, out=out)
    if t.weights is None:
        # added as differences from the tail gradient already there, and none at p = 0 slots (the tail's):
        # a padding id repeated, or equal to a kept id, leaves every id its own gradient
        out.scatter_add_(-1, t.ids, torch.where(t.p > 0, kept_grad - out.gather(-1, t.ids), 0.0))
    else:
        out.scatter_add_(-1, t.ids, kept_grad)
    out.scatter_add_(-1, nxt, -cw)
    return _masked_sum(kl, t.kl_rows), ce_sum


def _masked_sum(kl: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return (kl if rows is None else torch.where(rows, kl, 0.0)).sum()


@dataclass
class SliceTargets:
    """The targets of N positions (one slice) for `slice_loss_grad`."""

    ids: torch.Tensor  # (N, K) int64
    p: torch.Tensor  # (N, K) float32 >= 0, at the loss's temperature
    weights: torch.Tensor | None  # (N, K) sampled targets' importance weights (0 at padding), else None
    tail: str  # bucket or renormalize
    a: torch.Tensor  # (N,) the KL gradient's weight: (1 - alpha) * T / kl_count, 0 where no target
    kl_rows: torch.Tensor | None  # (N,) bool, the positions whose KL counts (None: all)
    ce_rows: torch.Tensor  # (N,) bool, the positions that predict a next token

    def rows(self, sl: slice) -> SliceTargets:
        return SliceTargets(self.ids[sl], self.p[sl], None if self.weights is None else self.weights[sl], self.tail,
                            self.a[sl], None if self.kl_rows is None else self.kl_rows[sl], self.ce_rows[sl])


def flat_targets(input_ids: torch.Tensor, ids: torch.Tensor | None, probs: torch.Tensor | None,
                 weights: torch.Tensor | None, mask: torch.Tensor | None, alpha: float, temperature: float,
                 tail: str, reduction: str) -> tuple[torch.Tensor, torch.Tensor, SliceTargets | None]:
    """The batch's targets flattened to B * T positions: (next_ids (N,), ce_w (N,), targets or None when
    alpha = 1), with the loss's normalisers folded into the weights (CE: mean over the B * (T - 1)
    predicted positions; KL: `_reduce`'s token mean over the positions with a target, or paper's / B)."""
    b, t = input_ids.shape
    next_ids = torch.nn.functional.pad(input_ids[:, 1:], (0, 1)).reshape(-1)  # (N,): 0 after the last
    ce_rows = torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
    ce_rows[:, -1] = False
    ce_rows = ce_rows.reshape(-1)
    ce_w = ce_rows.to(torch.float32) * (alpha / max(1, b * (t - 1)))
    if ids is None:
        return next_ids, ce_w, None
    if mask is None:
        count = b if reduction == "paper" else b * t
        a = torch.full((b * t,), (1.0 - alpha) * temperature / count, device=input_ids.device)
        kl_rows = None
    else:
        mask = mask.to(torch.float32).reshape(-1)
        count = torch.tensor(float(b), device=mask.device) if reduction == "paper" else mask.sum().clamp(min=1.0)
        a = (1.0 - alpha) * temperature / count * mask  # a 0-d tensor count: no device sync
        kl_rows = mask > 0
    k = ids.shape[-1]
    return next_ids, ce_w, SliceTargets(
        ids.reshape(-1, k), probs.float().clamp(min=0).reshape(-1, k),
        None if weights is None else weights.float().reshape(-1, k), tail, a, kl_rows, ce_rows)


def kl_count(input_ids: torch.Tensor, mask: torch.Tensor | None, reduction: str):
    """The KL's divisor: B (paper), else the positions with a target."""
    b, t = input_ids.shape
    if reduction == "paper":
        return float(b)
    return float(b * t) if mask is None else mask.to(torch.float32).sum().clamp(min=1.0)


class _FusedDistill(torch.autograd.Function):
    """alpha * CE + (1 - alpha) * T^2 * KL over K ids + tail bucket, the gradient written in the
    forward into one (B, T, V) buffer by `slice_loss_grad`, a few rows at a time (autograd's version keeps
    log-softmaxes and takes a logsumexp backward, a gather backward into zeros and a slice backward).
    Returns (loss, kl, ce); only the loss carries a gradient."""

    @staticmethod
    def forward(ctx, logits, input_ids, targets, temperature, alpha, count):
        next_ids, ce_w, t = targets
        b, tt, v = logits.shape
        grad = _gradient_buffer(logits)  # (B, T, V) float32
        kl_sum = ce_sum = logits.new_zeros((), dtype=torch.float32)
        for rows in _row_slices(logits):
            flat = slice(rows.start * tt, rows.stop * tt)  # the same rows as positions of the (B * T) flattening
            kl, ce = slice_loss_grad(logits[rows].detach().reshape(-1, v), grad[rows].view(-1, v), next_ids[flat],
                                     ce_w[flat], t.rows(flat), temperature)
            kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
        kl = temperature**2 * kl_sum / count
        ce = ce_sum / (b * (tt - 1))
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(kl, ce)
        return alpha * ce + (1.0 - alpha) * kl, kl, ce

    @staticmethod
    def backward(ctx, grad_loss, grad_kl, grad_ce):
        (grad,) = ctx.saved_tensors
        return _scale_saved_grad(grad, grad_loss, ctx.logits_dtype), None, None, None, None, None


def fused_distill_loss(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor,
                       input_ids: torch.Tensor, temperature: float, alpha: float, reduction: str = "token",
                       mask: torch.Tensor | None = None):
    """(loss, kl, ce) = alpha * next_token_ce + (1 - alpha) * sparse_kl(..., tail="bucket", mask=mask), with
    kl and ce detached for logging: the training path (about a third of autograd's (B, T, V) passes).
    `mask` (B, T): 1 where the position has a teacher target (reference.py's docstring)."""
    targets = flat_targets(input_ids, topk_ids, topk_probs, None, mask, float(alpha), float(temperature), "bucket",
                           reduction)
    return _FusedDistill.apply(student_logits, input_ids, targets, float(temperature), float(alpha),
                               kl_count(input_ids, mask, reduction))


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
