"""The one evaluation path: CE, perplexity, bits per byte and teacher KL over token rows.

Validation during training and `logitcache eval` both call `lm_metrics`, so a model's val_ce in
metrics.jsonl and its CE in eval agree by construction. Bits per byte counts neither the nats nor
the bytes of special-token targets (`<s>`/`</s>` around documents stand for no text), as nanochat's
evaluate_bpb does; its bytes are those of the decoded text (byte_counts), whatever the tokenizer:
byte-level BPE, sentencepiece-style Metaspace with byte fallback, unigram. CE and perplexity average
over every predicted position.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.tokenizer import adds_prefix_space, decoded_bytes, spec_steps
from ..errors import LogitcacheError
from ..progress import NULL_PROGRESS, ProgressHook
from ..runtime import device as D


@dataclass(frozen=True)
class ByteCounts:
    """UTF-8 bytes of text each token id stands for.

    lengths: (V,) bytes of the token's decoded text mid-document (a byte-fallback <0xNN> is one byte,
    Metaspace's ▁ one space); 0 for special tokens. lead_space: (V,) 1 where the token starts with a space
    the tokenizer puts in front of every text (Metaspace, a Prepend normalizer, ByteLevel add_prefix_space):
    right after a special token (a document start) that space is no text and is not counted, as decoding
    drops it. So the bytes of a document's targets sum to len(document.encode()) (one fewer for a document
    that itself starts with a space under Metaspace, as its decoded text)."""

    lengths: np.ndarray
    lead_space: np.ndarray
    special: np.ndarray  # (V,) bool

    def target_bytes(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token rows -> (B, T-1) bytes of each target ids[:, 1:] (0 for specials)."""
        lengths, lead, special = (torch.from_numpy(a).to(ids.device) for a in (self.lengths, self.lead_space, self.special))
        targets = ids[:, 1:]
        return lengths[targets] - lead[targets] * special[ids[:, :-1]]


def byte_counts(tokenizer) -> ByteCounts:
    """ByteCounts of a `tokenizers` Tokenizer, from its decoder and what it prepends; a decoder logitcache
    cannot count bytes for is refused by name."""
    spec = json.loads(tokenizer.to_str())
    decoder = spec_steps(spec.get("decoder"), "decoders")
    if not decoder:
        raise LogitcacheError("bits/byte: the tokenizer has no decoder, so its text bytes are unknown")
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    lengths, lead, special = np.zeros(size, np.int64), np.zeros(size, np.int64), np.zeros(size, bool)
    added = {token_id: t for token_id, t in tokenizer.get_added_tokens_decoder().items()}
    prefix_space = adds_prefix_space(spec)
    for token, token_id in tokenizer.get_vocab(with_added_tokens=True).items():
        if token_id in added:
            special[token_id] = added[token_id].special
            lengths[token_id] = 0 if added[token_id].special else len(added[token_id].content.encode())
            continue
        raw = decoded_bytes(token, decoder)
        lengths[token_id] = len(raw)
        lead[token_id] = int(prefix_space and raw[:1] == b" ")
    return ByteCounts(lengths, lead, special)


@torch.no_grad()
def lm_metrics(model, rows: np.ndarray, batch_size: int, device: torch.device, env: D.DistEnv = D.DistEnv(),
               autocast=contextlib.nullcontext, bytes_of: ByteCounts | None = None, ensemble=None,
               progress: ProgressHook = NULL_PROGRESS, lockstep: bool = False) -> dict:
    """Metrics of `model` on (N, T) token rows; each rank takes every world-th row and sums are all-reduced.

    Returns ce (nats per predicted token), ppl, tokens; bits_per_byte when `bytes_of` is given (special
    targets excluded from both sums); teacher_top1_agreement and teacher_kl (KL(teacher || model) at
    the ensemble's temperature, per position) when an ensemble is given. `lockstep`: every rank runs as many
    forwards as the rank with the most rows (a sharded model's forward is a collective), the extra ones on a
    row of its own whose results are dropped.
    """
    was_training = model.training
    model.eval()
    mine = rows[env.rank::env.world]
    # (CE nats, predicted tokens, nats of text targets, bytes of text targets, agree, KL nats, KL positions)
    sums = torch.zeros(7, dtype=torch.float64, device=device)
    progress.start("eval", mine.shape[0])
    starts = range(0, -(-rows.shape[0] // env.world) if lockstep else mine.shape[0], batch_size)
    for start in starts:
        if start >= mine.shape[0]:  # lockstep: this rank has no rows left, the others still run a forward
            with autocast():
                model(input_ids=torch.from_numpy(rows[:1].astype(np.int64)).to(device))
            continue
        ids = torch.from_numpy(mine[start:start + batch_size].astype(np.int64)).to(device)  # (B, T)
        with autocast():
            logits = model(input_ids=ids).logits
        logits = logits.float()  # (B, T, V)
        targets = ids[:, 1:]  # (B, T-1)
        nats = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        sums[0] += nats.double().sum()
        sums[1] += targets.numel()
        if bytes_of is not None:
            text = ~torch.from_numpy(bytes_of.special).to(device)[targets.reshape(-1)]  # (B*(T-1),) text targets
            sums[2] += nats.double()[text].sum()
            sums[3] += bytes_of.target_bytes(ids).sum()
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

    def mean(numerator: float, count: float) -> float:  # over no rows there is no mean: NaN (JSON null), not 0
        return numerator / count if count > 0 else float("nan")

    ce = mean(total[0], total[1])
    out = {"ce": ce, "ppl": math.exp(min(ce, 50.0)), "tokens": int(total[1])}
    if bytes_of is not None:
        out["bits_per_byte"] = mean(total[2] / math.log(2), total[3])
    if ensemble is not None:
        out["teacher_top1_agreement"] = mean(total[4], total[6])
        out["teacher_kl"] = mean(total[5], total[6])
    return out
