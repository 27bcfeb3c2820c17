"""The teacher ensemble at temperature T: full distributions (online reference) and top-k targets.

Per teacher i, p_i = softmax(z_i / T). combine = mean-logits: softmax(mean_i z_i / T) (the paper's
code); mean-probs: mean_i p_i. The (B, T, V) work buffers are allocated once and reused in place:
at vocab 16,000 they dominate memory traffic, and re-allocating them costs page faults every step.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .errors import LogitcacheError
from .stage_configs import Combine, choices

COMBINES = choices(Combine)


class Ensemble:
    def __init__(self, models: list, combine: str, temperature: float, device: torch.device, autocast=None):
        if combine not in COMBINES:
            raise LogitcacheError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        vocabs = {int(m.config.vocab_size) for m in models}
        if len(vocabs) != 1:
            raise LogitcacheError(f"teachers disagree on vocabulary size: {sorted(vocabs)}")
        self.models = [m.to(device).eval() for m in models]
        self.vocab_size = vocabs.pop()
        self.combine = combine
        self.temperature = float(temperature)
        self.device = device
        self.autocast = autocast or contextlib.nullcontext
        self._buffers: dict[str, torch.Tensor] = {}
        # fp32 output embeddings: the final projection runs in fp32 even under bf16 autocast
        self._heads = [m.get_output_embeddings().weight.detach().float() for m in self.models]

    def _buffer(self, name: str, shape) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != torch.Size(shape):
            buf = torch.empty(shape, dtype=torch.float32, device=self.device)
            self._buffers[name] = buf
        return buf

    @torch.no_grad()
    def _logits_into(self, i: int, input_ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Teacher i's logits (B, T, V) written into `out` (no fresh (B, T, V) allocation)."""
        model = self.models[i]
        with self.autocast():
            hidden = model.base_model(input_ids=input_ids).last_hidden_state  # (B, T, H)
        torch.matmul(hidden.float(), self._heads[i].t(), out=out)
        bias = getattr(model.get_output_embeddings(), "bias", None)
        if bias is not None:
            out.add_(bias.float())
        return out

    @torch.no_grad()
    def _combined(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(B, T, V) buffer holding mean-logits / T (is_prob False) or mean-probs (is_prob True)."""
        shape = (*input_ids.shape, self.vocab_size)
        acc = self._buffer("acc", shape)
        if self.combine == "mean-logits":
            if len(self.models) == 1:
                self._logits_into(0, input_ids, acc)
            else:
                work = self._buffer("work", shape)
                acc.zero_()
                for i in range(len(self.models)):
                    acc.add_(self._logits_into(i, input_ids, work))
            acc.mul_(1.0 / (len(self.models) * self.temperature))
            return acc, False
        work = self._buffer("work", shape)
        acc.zero_()
        for i in range(len(self.models)):
            self._logits_into(i, input_ids, work).mul_(1.0 / self.temperature)
            _softmax_(work)
            acc.add_(work)
        acc.mul_(1.0 / len(self.models))
        return acc, True

    @torch.no_grad()
    def topk(self, input_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k ids (B, T, K) int64 and their ensemble probabilities (B, T, K) float32, decreasing."""
        acc, is_prob = self._combined(input_ids)
        top_vals, top_ids = acc.topk(k, dim=-1)  # (B, T, K)
        if is_prob:
            return top_ids, top_vals.clone()
        top_max = top_vals[..., :1]
        denom = acc.sub_(top_max).exp_().sum(-1, keepdim=True)  # destroys acc; top-k already taken
        return top_ids, torch.exp(top_vals - top_max) / denom

    @torch.no_grad()
    def probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The full ensemble distribution at T, (B, T, V) float32 (a fresh tensor the caller may keep)."""
        acc, is_prob = self._combined(input_ids)
        if not is_prob:
            _softmax_(acc)
        return acc.clone()


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """In-place softmax over the last dim."""
    x.sub_(x.amax(-1, keepdim=True)).exp_()
    return x.div_(x.sum(-1, keepdim=True))


def load_teachers(paths: list[Path], device: torch.device, tokenizer_sha: str | None = None) -> tuple[list, list[dict]]:
    """Load teacher dirs; refuse a vocabulary or tokenizer that disagrees, before any work."""
    from .configs import sha256_file
    from .models import describe, load_model

    if not paths:
        raise LogitcacheError("at least one --teacher is required")
    models, infos = [], []
    for path in paths:
        path = Path(path)
        model = load_model(path)
        if tokenizer_sha is not None:
            tok = path / "tokenizer.json"
            if tok.is_file() and sha256_file(tok) != tokenizer_sha:
                raise LogitcacheError(f"teacher {path} was trained with a different tokenizer than the data's")
        models.append(model)
        infos.append(describe(path, model))
    vocabs = {info["vocab_size"] for info in infos}
    if len(vocabs) != 1:
        detail = ", ".join(f"{i['path']}: {i['vocab_size']}" for i in infos)
        raise LogitcacheError(f"teachers disagree on vocabulary size ({detail})")
    return models, infos
