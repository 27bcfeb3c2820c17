"""The teacher ensemble at temperature T: full distributions (online reference) and top-k targets.

Per teacher i, p_i = softmax(z_i / T); the combine modes (combines.py: mean-logits, mean-probs) turn
the teachers' logits into the ensemble distribution. The (B, T, V) work buffers are allocated once and
reused in place: at vocab 16,000 they dominate memory traffic, and re-allocating them costs page faults
every step.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import LogitcacheError
from .combines import COMBINES
from .targets import mass_targets, sample_targets

log = logging.getLogger(__name__)


# Architectures whose forward ends at `lm_head(hidden)`: nothing scales, caps or biases the logits after
# the head, so the in-place fp32 projection is their exact logits. Every other model (Gemma-2's
# soft-capping, Granite's logits_scaling, Cohere's logit_scale, anything unknown) runs its own forward.
# A probe at load time checks the fast path against `model(x).logits` before it is trusted.
PLAIN_HEAD_TYPES = frozenset({"llama", "gpt2", "qwen2", "qwen3", "mistral", "phi3", "olmo2", "gpt_neox", "opt"})
DEFAULT_LOGIT_BUDGET = 1 << 30  # bytes of (rows, T, V) float32 buffers per pass: a batch runs in row slices


def fast_head_is_exact(model, vocab_size: int, device: torch.device) -> bool:
    """True when `hidden @ W_out^T (+ b)` in fp32 equals the model's own logits (probed on 2 x 8 ids)."""
    if model.config.model_type not in PLAIN_HEAD_TYPES:
        return False
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        return False
    # ids past the usual specials (0..2): transformers warns when a probe looks padded
    ids = (torch.arange(16, device=device).reshape(2, 8) * 7 + 3) % vocab_size
    with torch.no_grad():
        own = model(input_ids=ids).logits.float()[..., :vocab_size]
        hidden = model.base_model(input_ids=ids).last_hidden_state.float()
        fast = hidden @ head.weight.float()[:vocab_size].t()
        if getattr(head, "bias", None) is not None:
            fast = fast + head.bias.float()[:vocab_size]
    scale = float(own.abs().max().clamp(min=1.0))
    exact = float((own - fast).abs().max()) <= 1e-5 * scale
    if not exact:
        log.warning("%s: the fast head disagrees with the model's forward; using the model's own forward",
                    model.config.model_type)
    return exact


def balanced_step(rows: int, step: int) -> int:
    """Rows per pass when `rows` run in passes of at most `step`: the fewest passes, as even as one pass size
    makes them (16 rows at step 14: 8 + 8, not 14 + 2; 7 at step 3: 3 + 3 + 1, the last short by less than
    the number of passes), so no pass but the last runs the teachers on a sliver."""
    passes = -(-rows // max(1, step))
    return -(-rows // passes) if rows else step


@contextlib.contextmanager
def fp32_head(model):
    """Inside this context the model's output embedding runs in fp32 under any autocast: its input is upcast
    and its matmul runs with autocast off. So a forward under bf16 autocast gives fp32 logits, and what
    the model's forward does to them after the head (Gemma-2's soft-capping, Granite's and Cohere's
    scaling: elementwise ops, which autocast runs in their input's dtype) is fp32 too; only the layers
    before the head run in bf16. The head's weights are read in fp32 whatever their dtype."""
    head = model.get_output_embeddings()
    if head is None:
        yield
        return
    own = head.__dict__.get("forward")  # an instance-level forward (accelerate's hooks) is kept and restored
    inner = head.forward

    def forward(hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            if type(head) is torch.nn.Linear:
                bias = None if head.bias is None else head.bias.float()
                return torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)  # (B, T, V) fp32
            return inner(hidden.float(), *args, **kwargs)

    head.forward = forward
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


class Ensemble:
    """`vocab_size`: the data tokenizer's vocabulary V. Teachers whose embedding is padded beyond it
    (config.vocab_size > V, common in hub checkpoints) are read on ids 0..V-1 only: ids the tokenizer
    never produces get no probability, and every distribution here is over the tokenizer's ids."""

    counted = False  # every teacher reads the data's tokens: a target at every position, no teacher count
    stats = None  # coverage counts: teachers on tokenizers of their own only (mixed.MixedEnsemble)

    def __init__(self, models: list, combine: str, temperature: float, device: torch.device, autocast=None,
                 vocab_size: int | None = None, logit_budget: int = DEFAULT_LOGIT_BUDGET):
        if combine not in COMBINES:
            raise LogitcacheError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        vocabs = {int(m.config.vocab_size) for m in models}
        if len(vocabs) != 1:
            raise LogitcacheError(f"teachers disagree on vocabulary size: {sorted(vocabs)}")
        self.model_vocab_size = vocabs.pop()
        self.vocab_size = int(vocab_size or self.model_vocab_size)
        if self.vocab_size > self.model_vocab_size:
            raise LogitcacheError(f"the tokenizer has {self.vocab_size} ids but the teachers only {self.model_vocab_size}")
        self.models = [m.to(device).eval() for m in models]
        self.combine = combine
        self._mode = COMBINES[combine]
        self.temperature = float(temperature)
        self.device = device
        self.autocast = autocast or contextlib.nullcontext
        self.logit_budget = int(logit_budget)
        self._buffers: dict[str, torch.Tensor] = {}
        self._fast = [fast_head_is_exact(m, self.vocab_size, device) for m in self.models]
        # fp32 output embeddings (first V rows): the final projection runs in fp32 even under bf16 autocast
        self._heads = [m.get_output_embeddings().weight.detach().float()[:self.vocab_size] if fast else None
                       for m, fast in zip(self.models, self._fast)]
        self._biases = [_head_bias(m, self.vocab_size) if fast else None for m, fast in zip(self.models, self._fast)]

    def buffer(self, name: str, shape) -> torch.Tensor:
        """The reusable float32 buffer `name` of this shape (reallocated only when the shape changes)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != torch.Size(shape):
            self._buffers.pop(name, None)  # free the old one before allocating: at V = 256k they are GBs
            buf = torch.empty(shape, dtype=torch.float32, device=self.device)
            self._buffers[name] = buf
        return buf

    def rows_per_pass(self, seq_len: int) -> int:
        """Rows whose (rows, T, V) float32 buffers fit the logit budget; at least 1. The combine mode says how
        many buffers a row needs: mean-logits over fast heads one (the GEMMs accumulate into it); mean-probs,
        or a model's own forward, two."""
        buffers = self._mode.buffers_per_row(all(self._fast))
        return max(1, self.logit_budget // (buffers * 4 * seq_len * self.vocab_size))

    @torch.no_grad()
    def logits_into(self, i: int, input_ids: torch.Tensor, out: torch.Tensor, scale: float,
                    accumulate: bool = False) -> torch.Tensor:
        """out = (out if accumulate else 0) + scale * teacher i's logits over the tokenizer's ids, (B, T, V).
        On the fast head the scale and the sum happen inside the fp32 GEMM (BLAS alpha/beta): no zero, add
        or scale pass over (B, T, V), so mean-logits needs no second buffer."""
        model = self.models[i]
        if not self._fast[i]:  # the model's own forward: exact for any head post-processing, the head in fp32
            with self.autocast(), fp32_head(model):
                logits = model(input_ids=input_ids).logits[..., :self.vocab_size]  # (B, T, V)
            return out.add_(logits, alpha=scale) if accumulate else torch.mul(logits, scale, out=out)
        with self.autocast():
            hidden = model.base_model(input_ids=input_ids).last_hidden_state  # (B, T, H)
        out_2d = out.view(-1, self.vocab_size)  # (B*T, V)
        # beta = 0 ignores out's old contents, NaN included (torch.addmm's documented contract)
        torch.addmm(out_2d, hidden.float().reshape(out_2d.shape[0], -1), self._heads[i].t(),
                    beta=1.0 if accumulate else 0.0, alpha=scale, out=out_2d)
        if self._biases[i] is not None:
            out.add_(self._biases[i], alpha=scale)
        return out

    @torch.no_grad()
    def _combined(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The ensemble distribution (B, T, V) float32, in a reused buffer."""
        return self._mode.combine(self, input_ids)

    @torch.no_grad()
    def topk(self, input_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k ids (B, T, K) int64 and their ensemble probabilities (B, T, K) float32, decreasing.
        The batch runs in row slices that fit the logit budget, so memory is bounded at any V."""
        step = balanced_step(input_ids.shape[0], self.rows_per_pass(input_ids.shape[1]))
        parts = [self._topk_slice(input_ids[r:r + step], k) for r in range(0, input_ids.shape[0], step)]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _topk_slice(self, input_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        top_probs, top_ids = topk_decreasing(self._combined(input_ids), k)  # (b, T, K), fresh tensors (acc is reused)
        return top_ids, top_probs

    def batch_targets(self, config, input_ids: torch.Tensor, cache_rows: np.ndarray,
                      generator: torch.Generator) -> list[torch.Tensor]:
        """One batch's targets (targets.Teachers.batch_targets; `cache_rows` unused: the tokens are given)."""
        if config.targets == "mass":
            return mass_targets(*self.topk(input_ids, config.max_k), config.mass)  # (B, T, K) x2, (B, T)
        if config.targets == "topk":
            return list(self.topk(input_ids, config.top_k))  # (B, T, K) each
        return list(sample_targets(self.probs(input_ids), config.samples, config.proposal_temperature, generator))

    @torch.no_grad()
    def probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The full ensemble distribution at T, (B, T, V) float32 (a fresh tensor the caller may keep). As in
        `topk`, the batch runs in row slices that fit the logit budget: the work buffers hold one slice."""
        step = balanced_step(input_ids.shape[0], self.rows_per_pass(input_ids.shape[1]))
        out = torch.empty((*input_ids.shape, self.vocab_size), dtype=torch.float32, device=self.device)  # (B, T, V)
        for r in range(0, input_ids.shape[0], step):
            out[r:r + step].copy_(self._combined(input_ids[r:r + step]))  # (b, T, V), b <= step
        return out


def topk_decreasing(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x.topk(k, dim=-1): values and ids (..., K), decreasing. On CPU where k * 64 > V, torch's topk runs
    std::nth_element over (value, index) pairs per row, ~4x slower than numpy's argpartition at V = 2,000
    (and k * 64 <= V takes its faster partial-sort path, which numpy does not beat): there the rows are
    selected with argpartition and sorted in parts on the intra-op threads (numpy releases the GIL).
    Among exactly equal values either may pick a different index; the values are the same."""
    vocab = x.shape[-1]
    if x.device.type != "cpu" or k * 64 <= vocab or k >= vocab:
        return x.topk(k, dim=-1)
    rows = x.detach().reshape(-1, vocab).numpy()  # (R, V), a view
    values = np.empty((rows.shape[0], k), dtype=rows.dtype)  # (R, K)
    ids = np.empty((rows.shape[0], k), dtype=np.int64)  # (R, K)

    def select(start: int, stop: int) -> None:
        part_ids = np.argpartition(rows[start:stop], vocab - k, axis=-1)[:, vocab - k:]  # (r, K) unordered
        part_values = np.take_along_axis(rows[start:stop], part_ids, axis=-1)
        order = np.argsort(-part_values, axis=-1, kind="stable")  # decreasing
        values[start:stop] = np.take_along_axis(part_values, order, axis=-1)
        ids[start:stop] = np.take_along_axis(part_ids, order, axis=-1)

    n_parts = max(1, min(torch.get_num_threads(), rows.shape[0] // 64))
    bounds = np.linspace(0, rows.shape[0], n_parts + 1).astype(int)
    if n_parts == 1:
        select(0, rows.shape[0])
    else:
        list(_selection_pool().map(select, bounds[:-1], bounds[1:]))
    shape = (*x.shape[:-1], k)
    return torch.from_numpy(values).reshape(shape), torch.from_numpy(ids).reshape(shape)


@functools.cache
def _selection_pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="logitcache-topk")


def _head_bias(model, vocab_size: int):
    bias = getattr(model.get_output_embeddings(), "bias", None)
    return None if bias is None else bias.detach().float()[:vocab_size]


def load_teachers(paths: list[Path], device: torch.device, data=None, own_tokenizers: bool = False,
                  weights: bool = True) -> tuple[list, list[dict]]:
    """Load teacher dirs; refuse, before any work, teachers that disagree on their vocabulary or whose
    tokenizer does something other than the data's (compared by behaviour, not file bytes). A teacher
    without a tokenizer is accepted when its vocabulary covers the data's, with a warning. With
    `own_tokenizers` (dump), a teacher whose folder holds another tokenizer is accepted as a teacher with a
    tokenizer of its own: its info says "tokenizer": "own" and only the teachers on the data's tokenizer
    must agree on their vocabulary. `weights=False`: the architectures alone on the meta device (what
    describing the cache needs: a Ray driver never runs a teacher)."""
    from .models import describe, load_model
    from ..data.tokenizer import check_model_tokenizer, folder_tokenizer_identity, has_own_tokenizer

    if not paths:
        raise LogitcacheError("at least one --teacher is required")
    models, infos = [], []
    for path in paths:
        path = Path(path)
        model = load_model(path, weights=weights)
        info = describe(path, model)
        if data is not None and own_tokenizers and has_own_tokenizer(path, data):
            info |= {"tokenizer": "own", "tokenizer_identity": folder_tokenizer_identity(path)}
        elif data is not None:
            info["tokenizer_identity"] = check_model_tokenizer(path, info["vocab_size"], data, f"teacher {path}")
        models.append(model)
        infos.append(info)
    same = [info for info in infos if info.get("tokenizer") != "own"]
    vocabs = {info["vocab_size"] for info in same}
    if len(vocabs) > 1:
        detail = ", ".join(f"{i['path']}: {i['vocab_size']}" for i in same)
        raise LogitcacheError(f"teachers disagree on vocabulary size ({detail})")
    return models, infos
