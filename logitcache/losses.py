"""Distillation losses over cached sparse targets (DESIGN.md section 5).

Shapes: student logits s (B, T, V); cached ids I (B, T, K) and teacher probs p (B, T, K) at
temperature tau, p_tail = 1 - sum_k p. Nothing here materialises a dense (B, T, V) target: the
student's log-probs are gathered at the K ids and the tail uses a log-sum-exp over the rest.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TAILS = ("bucket", "renormalize")
REDUCTIONS = ("token", "paper")


def log_normalizer(student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logsumexp(s / T) over the vocabulary, (B, T)."""
    if temperature == 1.0:
        return torch.logsumexp(student_logits.float(), dim=-1)
    return torch.logsumexp(student_logits.float() / temperature, dim=-1)


def _xlogy_ratio(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q), with 0 where p == 0 (and no NaN gradient through the masked branch)."""
    positive = p > 0
    safe = torch.where(positive, log_p - log_q, torch.zeros_like(log_q))
    return torch.where(positive, p * safe, torch.zeros_like(p))


def _reduce(kl: torch.Tensor, reduction: str, mask: torch.Tensor | None) -> torch.Tensor:
    """kl (B, T) per position -> scalar. token: mean over positions; paper: sum / B (KLDivLoss batchmean)."""
    if mask is not None:
        kl = kl * mask
    if reduction == "paper":
        return kl.sum() / kl.shape[0]
    count = mask.sum() if mask is not None else torch.tensor(kl.numel(), device=kl.device)
    return kl.sum() / count.clamp(min=1)


def sparse_kl(
    student_logits: torch.Tensor,  # (B, T, V)
    topk_ids: torch.Tensor,  # (B, T, K) int64
    topk_probs: torch.Tensor,  # (B, T, K) teacher probabilities at `temperature`
    temperature: float,
    tail: str = "bucket",
    reduction: str = "token",
    mask: torch.Tensor | None = None,  # (B, T) 1 for positions that count
) -> torch.Tensor:
    """T^2 * KL(teacher || student) over the K kept ids plus a tail bucket (or renormalised over K).
    The reference implementation (autograd); training uses `fused_topk_kl` for the bucket tail."""
    lse_all = log_normalizer(student_logits, temperature)  # (B, T)
    kept = student_logits.gather(-1, topk_ids).float() / temperature  # (B, T, K): no (B, T, V) copy
    p = topk_probs.float().clamp(min=0)
    log_p = torch.log(p.clamp(min=1e-30))
    if tail == "renormalize":
        lse_kept = torch.logsumexp(kept, dim=-1, keepdim=True)  # (B, T, 1)
        p_mass = p.sum(-1, keepdim=True).clamp(min=1e-30)
        p_norm = p / p_mass
        kl = _xlogy_ratio(p_norm, log_p - torch.log(p_mass), kept - lse_kept).sum(-1)
    else:
        log_q = kept - lse_all.unsqueeze(-1)  # (B, T, K)
        kl = _xlogy_ratio(p, log_p, log_q).sum(-1)  # (B, T)
        p_tail = (1.0 - p.sum(-1)).clamp(min=0)  # (B, T)
        # log q_tail = log(1 - exp(lse_kept - lse_all)); guarded where the kept ids hold everything
        gap = (torch.logsumexp(kept, dim=-1) - lse_all).clamp(max=0)
        has_tail = (p_tail > 0) & (gap < -1e-6)
        safe_gap = torch.where(has_tail, gap, torch.full_like(gap, -1.0))
        log_q_tail = torch.log(-torch.expm1(safe_gap))
        tail_term = _xlogy_ratio(p_tail, torch.log(p_tail.clamp(min=1e-30)), log_q_tail)
        # if the teacher puts mass in the tail but the student puts (numerically) none there, the KL
        # is huge but finite: charge it at log q_tail = log(1e-6) rather than infinity
        fallback = (p_tail * (torch.log(p_tail.clamp(min=1e-30)) + 13.8155)).clamp(min=0)
        tail_term = torch.where(has_tail, tail_term, fallback)
        kl = kl + torch.where(p_tail > 0, tail_term, torch.zeros_like(tail_term))
    return temperature**2 * _reduce(kl, reduction, mask)


def dense_kl(
    student_logits: torch.Tensor,  # (B, T, V)
    teacher_probs: torch.Tensor,  # (B, T, V) full ensemble distribution at `temperature`
    temperature: float,
    reduction: str = "token",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(teacher || student) at full vocabulary (the online reference)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p = teacher_probs.float()
    kl = _xlogy_ratio(p, torch.log(p.clamp(min=1e-30)), log_q).sum(-1)
    return temperature**2 * _reduce(kl, reduction, mask)


def sampled_kl(
    student_logits: torch.Tensor,  # (B, T, V)
    sample_ids: torch.Tensor,  # (B, T, W) unique sampled ids (padding: weight 0)
    sample_probs: torch.Tensor,  # (B, T, W) teacher p_i at `temperature`
    sample_weights: torch.Tensor,  # (B, T, W) w_i = count_i / N * p_i / q_i (0 at padding)
    temperature: float,
    reduction: str = "token",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * sum_i w_i (log p_i - log s_i): an unbiased estimate of KL(p || s), and its gradient of the
    full KL's gradient (Sparse Logit Sampling, Anshumann et al. 2025)."""
    scaled = student_logits.float() / temperature
    log_s = scaled.gather(-1, sample_ids) - torch.logsumexp(scaled, dim=-1, keepdim=True)  # (B, T, W)
    w = sample_weights.float()
    log_p = torch.log(sample_probs.float().clamp(min=1e-30))
    kl = torch.where(w > 0, w * (log_p - log_s), torch.zeros_like(w)).sum(-1)  # (B, T)
    return temperature**2 * _reduce(kl, reduction, mask)


def retemper(topk_probs: torch.Tensor, t_cache: float, t_new: float) -> torch.Tensor:
    """Approximate targets at another temperature: p^(t_cache / t_new) renormalised over the kept ids
    (the tail cannot be re-tempered, so the result has no tail)."""
    logp = torch.log(topk_probs.float().clamp(min=1e-30)) * (t_cache / t_new)
    return torch.softmax(logp, dim=-1)



class _FusedTopkKL(torch.autograd.Function):
    """T^2 * KL over K ids + tail bucket, and at T = 1 the next-token CE too, with a hand-written
    backward: one softmax over (B, T, V) forward, one in-place pass over it backward (autograd's
    version takes a logsumexp backward, a gather backward into zeros and a slice backward).

    With q = softmax(z / T): d KL / d s_v = q_v - p_v for kept ids and q_v (1 - p_tail / q_tail)
    for the others (s = z / T); at T = 1, d CE / d z = q - onehot(next token) from the same q.
    """

    @staticmethod
    def forward(ctx, logits, topk_ids, topk_probs, temperature, kl_count, next_ids):
        z = logits.detach()
        # one fused softmax kernel (a logsumexp, a subtract and an exp were 2.5x slower on CPU)
        q = torch.softmax(z / temperature if temperature != 1.0 else z, dim=-1, dtype=torch.float32)  # (B, T, V)
        q_kept = q.gather(-1, topk_ids)  # (B, T, K)
        log_q_kept = torch.log(q_kept.clamp(min=1e-30))
        p = topk_probs.float().clamp(min=0)
        kl = _xlogy_ratio(p, torch.log(p.clamp(min=1e-30)), log_q_kept).sum(-1)  # (B, T)
        p_tail = (1.0 - p.sum(-1)).clamp(min=0)
        gap = torch.logsumexp(log_q_kept, dim=-1).clamp(max=0)  # log of the kept student mass
        has_tail = (p_tail > 0) & (gap < -1e-6)
        log_q_tail = torch.log(-torch.expm1(torch.where(has_tail, gap, torch.full_like(gap, -1.0))))
        fallback = (p_tail * (torch.log(p_tail.clamp(min=1e-30)) + 13.8155)).clamp(min=0)
        kl = kl + torch.where(has_tail, _xlogy_ratio(p_tail, torch.log(p_tail.clamp(min=1e-30)), log_q_tail), fallback)
        kl_value = temperature**2 * kl.sum() / kl_count
        ce_value = q.new_zeros(())
        if next_ids is not None:
            ce_value = -torch.log(q[:, :-1].gather(-1, next_ids.unsqueeze(-1)).clamp(min=1e-30)).mean()
        tail_factor = torch.where(has_tail, 1.0 - p_tail / torch.exp(log_q_tail), torch.ones_like(p_tail))  # (B, T)
        saved_next = next_ids if next_ids is not None else torch.empty(0, dtype=torch.long)
        ctx.save_for_backward(q, topk_ids, p, tail_factor, saved_next)
        ctx.temperature, ctx.kl_count, ctx.has_ce = temperature, kl_count, next_ids is not None
        ctx.logits_dtype = logits.dtype
        return kl_value, ce_value

    @staticmethod
    def backward(ctx, grad_kl, grad_ce):
        q, topk_ids, p, tail_factor, next_ids = ctx.saved_tensors
        a = grad_kl * ctx.temperature / ctx.kl_count  # T^2 / count, times 1 / T from s = z / T
        b = grad_ce / next_ids.numel() if ctx.has_ce else q.new_zeros(())
        q_kept = q.gather(-1, topk_ids)  # (B, T, K)
        scale = a * tail_factor  # (B, T)
        kept_grad = a * (q_kept - p)
        if ctx.has_ce:
            ce_rows = torch.zeros_like(scale)
            ce_rows[:, :-1] = b
            scale = scale + ce_rows
            kept_grad = kept_grad + ce_rows.unsqueeze(-1) * q_kept
        grad = q.mul_(scale.unsqueeze(-1))  # the saved softmax becomes the gradient, in place
        grad.scatter_(-1, topk_ids, kept_grad)
        if ctx.has_ce:
            grad[:, :-1].scatter_add_(-1, next_ids.unsqueeze(-1), (-b).expand(*next_ids.shape, 1).contiguous())
        return grad.to(ctx.logits_dtype), None, None, None, None, None


def fused_topk_kl(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor, temperature: float,
                  reduction: str = "token", input_ids: torch.Tensor | None = None):
    """(T^2 KL with a tail bucket, CE or None): equal to `sparse_kl(..., tail="bucket")` and, when
    `input_ids` is given (T = 1 only), to `next_token_ce`; about half the (B, T, V) passes."""
    b, t = topk_ids.shape[:2]
    count = b if reduction == "paper" else b * t
    next_ids = input_ids[:, 1:].contiguous() if input_ids is not None else None
    if next_ids is not None and temperature != 1.0:
        raise ValueError("the fused CE needs T = 1")
    kl, ce = _FusedTopkKL.apply(student_logits, topk_ids, topk_probs, float(temperature), count, next_ids)
    return kl, (ce if next_ids is not None else None)


class _FusedNextTokenCE(torch.autograd.Function):
    """Mean next-token CE with a hand-written backward: one softmax forward, the gradient written
    into it in place backward. F.cross_entropy on a sliced (B, T-1, V) view copies the slice,
    keeps log-probs, and builds a one-hot gradient: about twice the passes over (B, T, V)."""

    @staticmethod
    def forward(ctx, logits, next_ids):
        q = torch.softmax(logits.detach(), dim=-1, dtype=torch.float32)  # (B, T, V)
        picked = q[:, :-1].gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        ce = -torch.log(picked.clamp(min=1e-30)).mean()
        ctx.save_for_backward(q, next_ids)
        ctx.logits_dtype = logits.dtype
        return ce

    @staticmethod
    def backward(ctx, grad_ce):
        q, next_ids = ctx.saved_tensors
        b = grad_ce / next_ids.numel()
        grad = q.mul_(b)  # d CE / d z = (q - onehot) / count for positions 0..T-2
        grad[:, -1].zero_()  # the last position predicts nothing
        grad[:, :-1].scatter_add_(-1, next_ids.unsqueeze(-1), (-b).expand(*next_ids.shape, 1).contiguous())
        return grad.to(ctx.logits_dtype), None


def fused_next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Equal to `train.next_token_ce` (positions 0..T-2 predict tokens 1..T-1), for training."""
    return _FusedNextTokenCE.apply(logits, input_ids[:, 1:].contiguous())
