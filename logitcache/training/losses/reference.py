"""Distillation losses over cached sparse targets (docs/architecture.md, "Losses").

Shapes: student logits s (B, T, V); cached ids I (B, T, K) and teacher probs p (B, T, K) at
temperature tau, p_tail = 1 - sum_k p. Nothing here materialises a dense (B, T, V) target: the
student's log-probs are gathered at the K ids and the tail uses a log-sum-exp over the rest.

Positions without a teacher target (a cache's teacher_count == 0: no teacher with a tokenizer of its own
aligned there) take `mask` (B, T) = 0: their KL is left out of the sum and of the count, so with
kl_reduction "token" the KL is the mean over the positions that have a target, with "paper" the sum over
them / B; the CE term is every position's, unchanged. At a masked position the student trains with CE only.

A slot with p = 0 belongs to the tail (bucket) or to nothing (renormalize): an id whose code rounded it to 0
(its mass is in p_tail), or the padding of a mass-target cache (id 0, p 0 past a position's count). Such
slots are left out of the student's kept mass and keep the tail's gradient, so padding changes no loss,
even where a padding id repeats or equals a kept id.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """kl (B, T) per position -> scalar. token: mean over positions (those with mask 1); paper: sum / B
    (KLDivLoss batchmean). Masked positions count 0 (a where, not a product: their KL may be inf)."""
    if mask is not None:
        mask = mask.to(kl.dtype)
        kl = torch.where(mask > 0, kl, torch.zeros_like(kl))
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
    The reference implementation (autograd); training uses `fused_distill_loss` for the bucket tail."""
    kept = student_logits.gather(-1, topk_ids).float() / temperature  # (B, T, K): no (B, T, V) copy
    p = topk_probs.float().clamp(min=0)
    if tail == "renormalize":
        kl = _renormalized_kl(kept, p, p > 0)
    else:
        lse_all = log_normalizer(student_logits, temperature)  # (B, T)
        kl, _ = _bucket_kl(kept - lse_all.unsqueeze(-1), p)  # log q at the kept ids (B, T, K)
    return temperature**2 * _reduce(kl, reduction, mask)


def _renormalized_kl(kept: torch.Tensor, p: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL between teacher and student each renormalised over the kept ids, per position (B, T), from the
    student's scaled logits s / T at the ids (B, T, K) and the teacher's p >= 0 there. `valid` (B, T, K)
    marks the slots that hold an id (sampled targets pad with id 0); the others count in neither sum."""
    if valid is not None:
        kept = kept.masked_fill(~valid, float("-inf"))
        p = torch.where(valid, p, torch.zeros_like(p))
    lse_kept = torch.logsumexp(kept, dim=-1, keepdim=True)  # (B, T, 1)
    p_mass = p.sum(-1, keepdim=True).clamp(min=1e-30)
    p_norm = p / p_mass
    log_q = torch.where(p_norm > 0, kept - lse_kept, torch.zeros_like(kept))  # no -inf - -inf at padding
    return _xlogy_ratio(p_norm, torch.log(p.clamp(min=1e-30)) - torch.log(p_mass), log_q).sum(-1)


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
    full KL's gradient (Sparse Logit Sampling, Anshumann et al. 2025). The target is the decoded p: an
    id whose code rounded p_i to 0 counts 0, as 0 log 0 does in the top-k loss (log p_i is unknown there,
    and a stand-in such as log 1e-30 would add w_i * -69 to the logged KL); its weight, made from the
    unrounded p_i, is dropped with it, as an estimate of KL(decoded p || s) would weigh it 0."""
    scaled = student_logits.float() / temperature
    log_s = scaled.gather(-1, sample_ids) - torch.logsumexp(scaled, dim=-1, keepdim=True)  # (B, T, W)
    w = sample_weights.float()
    p = sample_probs.float()
    counted = (w > 0) & (p > 0)  # (B, T, W): drawn (not padding) and not rounded to 0 by the code
    log_p = torch.log(p.clamp(min=1e-30))
    kl = torch.where(counted, w * (log_p - log_s), torch.zeros_like(w)).sum(-1)  # (B, T)
    return temperature**2 * _reduce(kl, reduction, mask)


def sampled_renormalized_kl(
    student_logits: torch.Tensor,  # (B, T, V)
    sample_ids: torch.Tensor,  # (B, T, W) unique sampled ids (padding: weight 0)
    sample_probs: torch.Tensor,  # (B, T, W) teacher p_i at `temperature`
    sample_weights: torch.Tensor,  # (B, T, W) > 0 exactly at the drawn ids
    temperature: float,
    reduction: str = "token",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`--tail renormalize` for sampled targets: T^2 * KL between teacher and student each renormalised
    over the drawn ids, the top-k renormalised loss with the drawn ids as the kept ones. The importance
    weights are not used: p_i is known at every drawn id, and the rest of the vocabulary is dropped (a
    biased target, as with top-k, where the weighted sum estimates the full KL)."""
    kept = student_logits.gather(-1, sample_ids).float() / temperature  # (B, T, W)
    kl = _renormalized_kl(kept, sample_probs.float().clamp(min=0), sample_weights > 0)
    return temperature**2 * _reduce(kl, reduction, mask)


def retemper(topk_probs: torch.Tensor, t_cache: float, t_new: float) -> torch.Tensor:
    """Approximate targets at another temperature: p^(t_cache / t_new) renormalised over the kept ids
    (the tail cannot be re-tempered, so the result has no tail)."""
    logp = torch.log(topk_probs.float().clamp(min=1e-30)) * (t_cache / t_new)
    return torch.softmax(logp, dim=-1)


def _bucket_kl(log_q_kept: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL over the kept ids plus the tail as one bucket, per position (B, T), and the tail factor
    1 - p_tail / q_tail (B, T) (d KL / d s_v = q_v * it off the ids), from the student's log q at the
    kept ids (B, T, K) and the teacher's p >= 0 there. Shared by sparse_kl (autograd) and the fused loss."""
    kl = _xlogy_ratio(p, torch.log(p.clamp(min=1e-30)), log_q_kept).sum(-1)  # (B, T)
    p_tail = (1.0 - p.sum(-1)).clamp(min=0)
    # log q_tail = log(1 - q_kept mass); guarded where the kept ids hold (numerically) everything
    gap = torch.logsumexp(log_q_kept.masked_fill(p <= 0, float("-inf")), dim=-1).clamp(max=0)  # p = 0: tail
    has_tail = (p_tail > 0) & (gap < -1e-6)
    log_q_tail = torch.log(-torch.expm1(torch.where(has_tail, gap, torch.full_like(gap, -1.0))))
    # if the teacher puts mass in the tail but the student puts (numerically) none there, the KL is
    # huge but finite: charge it at log q_tail = log(1e-6) rather than infinity (0 when p_tail = 0)
    fallback = (p_tail * (torch.log(p_tail.clamp(min=1e-30)) + 13.8155)).clamp(min=0)
    kl = kl + torch.where(has_tail, _xlogy_ratio(p_tail, torch.log(p_tail.clamp(min=1e-30)), log_q_tail), fallback)
    tail_factor = torch.where(has_tail, 1.0 - p_tail / torch.exp(log_q_tail), torch.ones_like(p_tail))
    return kl, tail_factor


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean CE of positions 0..T-2 predicting tokens 1..T-1. logits (B, T, V), input_ids (B, T)."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), input_ids[:, 1:].reshape(-1))
