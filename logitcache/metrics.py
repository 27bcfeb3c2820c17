"""The one evaluation path: CE, perplexity, bits per byte and teacher KL over token rows.

Validation during training and `logitcache eval` both call `lm_metrics`, so a model's val_ce in
metrics.jsonl and its CE in eval agree by construction. Bits per byte counts neither the nats nor
the bytes of special-token targets (`</s>` between documents stands for no text), as nanochat's
evaluate_bpb does; CE and perplexity average over every predicted position.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as D
from .progress import NULL_PROGRESS, ProgressHook


def token_byte_lengths(tokenizer) -> np.ndarray:
    """(V,) UTF-8 bytes each token stands for (byte-level BPE: one mapped char per byte; specials 0)."""
    lengths = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    for token, token_id in tokenizer.get_vocab().items():
        lengths[token_id] = 0 if token in specials else len(token)
    return lengths


@torch.no_grad()
def lm_metrics(model, rows: np.ndarray, batch_size: int, device: torch.device, env: D.DistEnv = D.DistEnv(),
               autocast=contextlib.nullcontext, byte_lengths: np.ndarray | None = None, ensemble=None,
               progress: ProgressHook = NULL_PROGRESS) -> dict:
    """Metrics of `model` on (N, T) token rows; each rank takes every world-th row and sums are all-reduced.

    Returns ce (nats per predicted token), ppl, tokens; bits_per_byte when `byte_lengths` (V,) is given
    (specials excluded from both sums); teacher_top1_agreement and teacher_kl (KL(teacher || model) at
    the ensemble's temperature, per position) when an ensemble is given.
    """
    was_training = model.training
    model.eval()
    mine = rows[env.rank::env.world]
    # (CE nats, predicted tokens, nats of text targets, bytes of text targets, agree, KL nats, KL positions)
    sums = torch.zeros(7, dtype=torch.float64, device=device)
    lengths = torch.from_numpy(byte_lengths).to(device) if byte_lengths is not None else None
    progress.start("eval", mine.shape[0])
    for start in range(0, mine.shape[0], batch_size):
        ids = torch.from_numpy(mine[start:start + batch_size].astype(np.int64)).to(device)  # (B, T)
        with autocast():
            logits = model(input_ids=ids).logits
        logits = logits.float()  # (B, T, V)
        targets = ids[:, 1:]  # (B, T-1)
        nats = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        sums[0] += nats.double().sum()
        sums[1] += targets.numel()
        if lengths is not None:
            target_bytes = lengths[targets.reshape(-1)]  # (B*(T-1),) 0 for specials
            sums[2] += nats.double()[target_bytes > 0].sum()
            sums[3] += target_bytes.sum()
        if ensemble is not None:
            teacher = ensemble.probs(ids)  # (B, T, V) at the ensemble's temperature, over the tokenizer's ids
            model_logits = logits[..., :teacher.shape[-1]]  # a padded model vocabulary: the same ids
            log_q = F.log_softmax(model_logits / ensemble.temperature, dim=-1)
            sums[4] += (model_logits.argmax(-1) == teacher.argmax(-1)).sum()
            sums[5] += (torch.xlogy(teacher, teacher).sum() - (teacher * log_q).sum()).double()
            sums[6] += ids.numel()
        progress.update(ids.shape[0])
    progress.finish()
    D.all_reduce_sum(sums)
    model.train(was_training)
    total = sums.tolist()
    ce = total[0] / max(total[1], 1)
    out = {"ce": ce, "ppl": math.exp(min(ce, 50.0)), "tokens": int(total[1])}
    if lengths is not None:
        out["bits_per_byte"] = total[2] / math.log(2) / max(total[3], 1)
    if ensemble is not None:
        out["teacher_top1_agreement"] = total[4] / max(total[6], 1)
        out["teacher_kl"] = total[5] / max(total[6], 1)
    return out
