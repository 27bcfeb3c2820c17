"""The student's losses (docs/architecture.md, "Losses"): one module per implementation, each checked
against the autograd references.

- `reference.py`: autograd on materialised (B, T, V) logits; the definitions every other path equals.
- `fused.py`: the same losses with d loss / d logits written during the forward, over (B, T, V) logits.
- `linear.py`: the loss from the final hidden states and the head's weight, in chunks of tokens, never
  holding (B, T, V) logits or their gradient.
- `distill.py`: `distill_loss`, the one entry point the training stage and the integrations call.
"""
from .distill import distill_loss, target_mask
from .fused import CHUNK_ELEMENTS, POW_ROUTE_MAX_T, fused_distill_loss, fused_next_token_ce
from .linear import CHUNK_BUDGET_BYTES, auto_chunk_tokens, fused_linear_distill, head_logits, linear_head
from .reference import (dense_kl, log_normalizer, next_token_ce, retemper, sampled_kl, sampled_renormalized_kl,
                        sparse_kl)

__all__ = ["CHUNK_BUDGET_BYTES", "CHUNK_ELEMENTS", "POW_ROUTE_MAX_T", "auto_chunk_tokens", "dense_kl", "distill_loss",
           "fused_distill_loss", "fused_linear_distill", "fused_next_token_ce", "head_logits", "linear_head",
           "log_normalizer", "next_token_ce", "retemper", "sampled_kl", "sampled_renormalized_kl", "sparse_kl",
           "target_mask"]
