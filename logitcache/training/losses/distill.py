"""`distill_loss`: the student's loss from one batch, the one entry point of the training stage and the
integrations (docs/architecture.md, "Losses").

The batch is a dict of tensors, as `training/loader.CacheRows` yields it:

    input_ids       (B, T) int64     the tokens; positions 0..T-2 predict tokens 1..T-1 (CE)
    topk_ids        (B, T, K) int64  the cache's ids: top-k, mass (padding: id 0, p 0) or sampled
    topk_probs      (B, T, K) float  the teacher's probabilities there, at the cache's temperature
    sample_weights  (B, T, K) float  sampled caches only: importance weights, 0 at padding
    teacher_count   (B, T) int       caches that have it: teachers aligned at each position (0: CE only)

The student comes in one of two forms: its `logits` (B, T, V), or its final `hidden` states (B, T, H)
with the head's `head_weight` (V, H) and `head_bias` (V,), from which the loss is computed in chunks of
tokens without ever holding (B, T, V) logits (linear.py).
"""
from __future__ import annotations

from typing import Mapping

import torch

from .fused import fused_distill_loss, fused_next_token_ce
from .linear import fused_linear_distill
from .reference import retemper, sampled_kl, sampled_renormalized_kl, sparse_kl

TAILS = ("bucket", "renormalize")
TARGET_KINDS = ("topk", "mass", "sample")


def target_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """(B, T) float32, 1 where at least one teacher is aligned (the cache's teacher_count > 0), or None for a
    cache without teacher_count (every position has a target)."""
    count = batch.get("teacher_count")
    return None if count is None else (count > 0).to(torch.float32)


def distill_loss(
    batch: Mapping[str, torch.Tensor],
    *,
    logits: torch.Tensor | None = None,  # (B, T, V)
    hidden: torch.Tensor | None = None,  # (B, T, H) the input of the head
    head_weight: torch.Tensor | None = None,  # (V, H)
    head_bias: torch.Tensor | None = None,  # (V,)
    alpha: float,
    temperature: float,
    tail: str = "bucket",
    reduction: str = "token",
    targets: str = "topk",
    retemper_from: float | None = None,
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
    chunk_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(loss, kl, ce): loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher || student), kl and ce detached
    for logging (kl None when alpha = 1: the batch needs no targets then).

    Pass `logits`, or `hidden` + `head_weight` (+ `head_bias`): the student's logits are then
    softcap * tanh((hidden @ W^T + b) * logit_scale / softcap) (no tanh when `logit_softcap` is None), made
    `chunk_tokens` tokens at a time (0: `linear.auto_chunk_tokens`, its fp32 buffers within
    `linear.CHUNK_BUDGET_BYTES`, on CPU at least 1.25 x the hidden size).
    `tail`: bucket (the mass the cache did not keep is one bucket) or renormalize (dropped); `targets`: the
    cache's kind (topk, mass or sample: sampled targets weigh their ids by `sample_weights`); `reduction`:
    token (KL mean per position) or paper (sum / B); `retemper_from`: the cache's temperature when it
    differs from `temperature` (p^(T_cache / T) renormalised over the kept ids, topk and mass only)."""
    if tail not in TAILS or targets not in TARGET_KINDS or reduction not in ("token", "paper"):
        raise ValueError(f"tail {tail!r}, targets {targets!r}, reduction {reduction!r}: tail is one of {TAILS}, "
                         f"targets one of {TARGET_KINDS}, reduction token or paper")
    if (logits is None) == (hidden is None or head_weight is None):
        raise ValueError("pass logits, or hidden and head_weight")
    if retemper_from is not None and targets == "sample":
        raise ValueError("retemper is not defined for sampled targets")
    input_ids = batch["input_ids"]
    distil = alpha < 1.0
    ids = batch["topk_ids"] if distil else None
    probs = batch["topk_probs"] if distil else None
    if probs is not None and retemper_from is not None:
        probs = retemper(probs, retemper_from, temperature)
    weights = batch["sample_weights"] if distil and targets == "sample" else None
    mask = target_mask(batch) if distil else None
    if logits is None:
        return fused_linear_distill(hidden, head_weight, head_bias, input_ids, ids, probs, weights, mask,
                                    alpha=alpha, temperature=temperature, tail=tail, reduction=reduction,
                                    logit_scale=logit_scale, logit_softcap=logit_softcap, chunk_tokens=chunk_tokens)
    if not distil:
        ce = fused_next_token_ce(logits, input_ids)
        return ce, None, ce.detach()
    if targets != "sample" and tail == "bucket":  # fused: one (B, T, V) gradient buffer
        return fused_distill_loss(logits, ids, probs, input_ids, temperature, alpha, reduction, mask)
    if targets == "sample":
        loss_of = sampled_renormalized_kl if tail == "renormalize" else sampled_kl
        kl = loss_of(logits, ids, probs, weights, temperature, reduction, mask)
    else:
        kl = sparse_kl(logits, ids, probs, temperature, tail, reduction, mask)
    ce = fused_next_token_ce(logits, input_ids)
    return alpha * ce + (1.0 - alpha) * kl, kl.detach(), ce.detach()
