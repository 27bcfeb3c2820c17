"""An ensemble whose teachers need not share the data's tokenizer, combined in the student's vocabulary.

A teacher on the data's tokenizer reads the stored tokens (an `Ensemble` of that one teacher: its exact
distribution at T over the data's ids, at every position). A teacher with a tokenizer of its own runs on
its own tokens of the same text (align.py), right-padded into a batch with an attention mask; its
distribution at T over its own vocabulary, read at the teacher position aligned with each student
position, is mapped onto student ids (align.IdMap: exact layers of unique targets); mass on teacher ids
without a student counterpart is left out, so the kept probabilities sum to less than 1 and the cache's
tail holds it. At each student position the distributions of the teachers aligned there are averaged
(weighted by --teacher-weight); `teacher_count` is how many there were (0: no target).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .align import KINDS, Aligner, ChunkAlignment
from .ensemble import DEFAULT_LOGIT_BUDGET, Ensemble, balanced_step, fast_head_is_exact, fp32_head, topk_decreasing
from .targets import mass_targets, sample_targets


class MixedEnsemble:
    """`teachers`: [(model, Aligner or None)]: None for a teacher on the data's tokenizer."""

    def __init__(self, teachers: list, temperature: float, device: torch.device, autocast=None,
                 vocab_size: int = 0, weights: tuple[float, ...] = (), logit_budget: int = DEFAULT_LOGIT_BUDGET):
        self.temperature = float(temperature)
        self.device = device
        self.autocast = autocast or contextlib.nullcontext
        self.vocab_size = int(vocab_size)
        self.logit_budget = int(logit_budget)
        self.weights = [float(w) for w in weights] if weights else [1.0] * len(teachers)
        self.members = []  # (Ensemble of one same-tokenizer teacher, None) or (model, Aligner)
        for model, aligner in teachers:
            if aligner is None:
                self.members.append((Ensemble([model], "mean-probs", temperature, device, autocast,
                                              vocab_size=vocab_size, logit_budget=logit_budget), None))
            else:
                self.members.append((model.to(device).eval(), aligner))
        # a different-tokenizer teacher whose head is a plain fp32 GEMM runs it here on the aligned rows, 1/T
        # folded into the GEMM (as Ensemble's fast head does): no (B*T, V_t) division pass
        self._fast = [a is not None and fast_head_is_exact(model, a.teacher.size, device)
                      for model, a in self.members]
        self._layers = [None if a is None else [[tuple(torch.from_numpy(x).to(device) for x in layer)
                                                  for layer in a.map.layers(kind)] for kind in range(KINDS)]
                        for _, a in self.members]
        self.counted = any(a is not None for _, a in self.members)  # the cache gets teacher_count
        # per member, over what ran here: STATS (aligned positions, positions, mapped mass at aligned positions,
        # positions the self-check checked, its violations)
        self.stats = np.zeros((len(self.members), len(STATS)), dtype=np.float64)

    @property
    def n_teachers(self) -> int:
        return len(self.members)

    def rows_per_pass(self, seq_len: int) -> int:
        """Rows whose float32 work buffers fit --logit-budget-mb. Per position, in units of 4 bytes: the
        combined distribution (V); each same-tokenizer member's Ensemble buffers (2 V, kept between calls)
        while the largest transient one teacher needs is alive (member_values)."""
        kept = self.vocab_size + sum(2 * self.vocab_size for _, a in self.members if a is None)
        transient = max([self.member_values(i) for i in range(len(self.members))], default=0)
        return max(1, self.logit_budget // (4 * seq_len * (kept + transient)))

    def member_values(self, i: int) -> int:
        """Per position, the values member i holds while it runs, beyond the kept buffers: a same-tokenizer
        teacher its probabilities (V) and, off the fast head, its own logits (V_model); a teacher with a
        tokenizer of its own its distribution (V), the mapped one at the aligned positions (V) and its logits
        there, their softmax written over them: on the fast head one (T, V_t) buffer; through its own forward
        3 V_model (its logits, a soft-cap's temporary or the [:V_t] copy, and without a head its logits at all
        its positions, L taken as 2T: its tokens per chunk are near T where both tokenizers are of a size)."""
        model, aligner = self.members[i]
        if aligner is None:
            ensemble = model
            width = max(int(m.config.vocab_size) for m in ensemble.models)
            return self.vocab_size + (0 if all(ensemble._fast) else width)
        if self._fast[i]:
            return 2 * self.vocab_size + aligner.teacher.size
        return 2 * self.vocab_size + 3 * max(int(model.config.vocab_size), aligner.teacher.size)

    @torch.no_grad()
    def targets(self, input_ids: torch.Tensor, cache_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The combined distribution (B, T, V) float32 (zeros where no teacher is aligned) and the number of
        teachers aligned at each position (B, T) uint8, for cache rows `cache_rows` (B,) holding `input_ids`;
        computed in row slices of rows_per_pass (the result is the same, row by row)."""
        step = balanced_step(input_ids.shape[0], self.rows_per_pass(input_ids.shape[1]))
        if input_ids.shape[0] <= step:
            return self._targets(input_ids, cache_rows)
        parts = [self._targets(input_ids[r:r + step], cache_rows[r:r + step])
                 for r in range(0, input_ids.shape[0], step)]
        return torch.cat([p for p, _ in parts]), torch.cat([c for _, c in parts])

    def _targets(self, input_ids: torch.Tensor, cache_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = input_ids.shape
        acc = torch.zeros(b, t, self.vocab_size, dtype=torch.float32, device=self.device)
        weight = torch.zeros(b, t, dtype=torch.float32, device=self.device)
        count = torch.zeros(b, t, dtype=torch.int32, device=self.device)
        tokens = input_ids.cpu().numpy()
        for i, (member, aligner) in enumerate(self.members):
            if aligner is None:  # the data's tokenizer: every position, exactly as a same-tokenizer dump
                acc.add_(member.probs(input_ids), alpha=self.weights[i])
                weight += self.weights[i]
                count += 1
                self.stats[i] += (b * t, b * t, b * t, 0, 0)
                continue
            checked, violations = aligner.checked, aligner.violations
            alignments = aligner.align(cache_rows, tokens, strict=True)  # refuses before any target is made
            mapped, aligned = self._teacher_probs(i, member, alignments)
            acc.add_(mapped, alpha=self.weights[i])
            weight += self.weights[i] * aligned
            count += aligned.to(torch.int32)
            self.stats[i] += (float(aligned.sum()), b * t, float(mapped.sum()), aligner.checked - checked,
                              aligner.violations - violations)
        acc.div_(torch.where(weight > 0, weight, torch.ones_like(weight)).unsqueeze(-1))
        return acc, count.to(torch.uint8)

    def _teacher_probs(self, i: int, model, alignments: list[ChunkAlignment]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher i's distribution at T mapped onto student ids at the aligned positions (B, T, V) (zeros
        elsewhere) and the aligned mask (B, T) float32."""
        ids, mask = padded(alignments, self.device)  # (B, L) each
        vocab = self.members[i][1].teacher.size
        position = torch.from_numpy(np.stack([a.position for a in alignments])).to(self.device)  # (B, T)
        aligned = position >= 0
        out = torch.zeros(aligned.numel(), self.vocab_size, dtype=torch.float32, device=self.device)  # (B*T, V)
        keep_np = np.flatnonzero(np.stack([a.position for a in alignments]).reshape(-1) >= 0)  # (R,) aligned
        if not len(keep_np):  # no position to read: no forward
            return out.reshape(*position.shape, self.vocab_size), aligned.float()
        keep = torch.from_numpy(keep_np).to(self.device)
        kind = np.stack([a.kind for a in alignments]).reshape(-1)[keep_np]  # (R,) the map kind at each
        rows = torch.arange(len(alignments), device=self.device).unsqueeze(1) * ids.shape[1]  # (B, 1)
        # (R,) the teacher position aligned with each aligned student position: the head runs on these rows
        # alone (no logits, softmax or map where there is no target)
        at_t = (rows + position.clamp(min=0)).reshape(-1).index_select(0, keep)
        if self._fast[i]:  # z / T in one fp32 GEMM: (R, V_t)
            with self.autocast():
                hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
            h = hidden.float().reshape(-1, hidden.shape[-1]).index_select(0, at_t)  # (R, H)
            head = model.get_output_embeddings()
            weight, bias = head.weight.detach().float()[:vocab], getattr(head, "bias", None)
            # beta = 0 ignores the input (torch.addmm's documented contract): a 0-d stand-in
            flat = torch.addmm(h.new_zeros(()), h, weight.t(), beta=0.0, alpha=1.0 / self.temperature)
            if bias is not None:  # (h W^T + b) / T
                flat.add_(bias.detach().float()[:vocab], alpha=1.0 / self.temperature)
        else:
            # (R, V_model) logits through the model's own forward, not (B, L, V_model) and a gather
            with self.autocast(), fp32_head(model), head_rows(model, at_t) as gathered:
                logits = model(input_ids=ids, attention_mask=mask).logits
            if gathered:
                flat = logits.reshape(-1, logits.shape[-1])[:, :vocab].float()  # (R, V_t)
            else:  # a model without a separate head: every position's logits, then the rows
                flat = logits.reshape(-1, logits.shape[-1]).index_select(0, at_t)[:, :vocab].float()
            flat = flat.contiguous().div_(self.temperature)  # a copy only where the logits are wider than V_t
        flat = torch.softmax(flat, dim=-1, out=flat)  # in place: one (R, V_t) buffer
        mapped = map_onto(flat, self._layers[i][0], self.vocab_size)  # (R, V)
        for k in range(1, KINDS):
            here = np.flatnonzero(kind == k)
            if len(here):
                at = torch.from_numpy(here).to(self.device)
                mapped[at] = map_onto(flat[at], self._layers[i][k], self.vocab_size)
        out.index_copy_(0, keep, mapped)  # zeros where the teacher is not aligned: no target there
        return out.reshape(*position.shape, self.vocab_size), aligned.float()

    @torch.no_grad()
    def topk(self, input_ids: torch.Tensor, k: int, cache_rows: np.ndarray):
        """Top-k ids (B, T, K) int64, probabilities (B, T, K) float32 decreasing, and the teacher count (B, T)
        uint8; where no teacher is aligned the ids are 0..K-1 with probability 0."""
        step = balanced_step(input_ids.shape[0], self.rows_per_pass(input_ids.shape[1]))
        if input_ids.shape[0] > step:  # slice by slice, so the (B, T, V) buffers hold one slice at a time
            parts = [self.topk(input_ids[r:r + step], k, cache_rows[r:r + step])
                     for r in range(0, input_ids.shape[0], step)]
            return tuple(torch.cat(column) for column in zip(*parts))
        probs, count = self._targets(input_ids, cache_rows)
        top_probs, top_ids = topk_decreasing(probs, k)
        none = (count == 0).unsqueeze(-1)
        top_ids = torch.where(none, torch.arange(k, device=top_ids.device).expand_as(top_ids), top_ids)
        return top_ids, torch.where(none, torch.zeros_like(top_probs), top_probs), count

    def coverage(self) -> list[dict]:
        """coverage_of the counts of the positions this process computed."""
        return coverage_of(self.stats)

    def batch_targets(self, config, input_ids: torch.Tensor, cache_rows: np.ndarray,
                      generator: torch.Generator) -> list[torch.Tensor]:
        """One batch's targets (targets.Teachers.batch_targets), the teacher count last when `counted`
        (--teacher-weight alone: every teacher everywhere, no count). Mass targets: the top max_k cut by
        mass, no ids where no teacher is aligned (count 0)."""
        if config.targets == "sample":
            probs, count = self.targets(input_ids, cache_rows)
            drawn = sample_targets(mixed_sample_inputs(probs, count), config.samples, config.proposal_temperature,
                                   generator)
            part = zero_unaligned(list(drawn), count) + [count]
        else:
            part = list(self.topk(input_ids, config.width, cache_rows))
        if config.targets == "mass":
            *selected, kept = mass_targets(part[0], part[1], config.mass)
            part = selected + [torch.where(part[-1] > 0, kept, torch.zeros_like(kept)), part[-1]]
        return part if self.counted else part[:-1]


STATS = ("aligned", "positions", "mass", "checked", "violations")  # MixedEnsemble.stats' columns


def coverage_of(stats: np.ndarray) -> list[dict]:
    """(teachers, len(STATS)) counts -> per teacher, the fraction aligned, the fraction of the teacher's
    probability at those positions that mapped onto student ids, and the alignment self-check's positions
    checked and violations."""
    return [{"positions": aligned / max(total, 1.0), "mass": mass / max(aligned, 1.0), "checked": int(checked),
             "violations": int(violations)}
            for aligned, total, mass, checked, violations in np.asarray(stats, dtype=np.float64).tolist()]


def has_head(model) -> bool:
    """Whether the model has an output embedding head_rows can gather the rows of."""
    return hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None


@contextlib.contextmanager
def head_rows(model, index: torch.Tensor):
    """Inside this context the model's output embedding reads only the rows `index` (R,) of its flattened
    (B, L, H) input, so the forward returns (1, R, V) logits: what the model does after its head (soft-capping,
    scaling) is elementwise and follows unchanged. Yields whether it applies (a model with a head)."""
    if not has_head(model):
        yield False
        return
    head = model.get_output_embeddings()

    def gather(module, args):
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, index).unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield True
    finally:
        handle.remove()


def padded(alignments: list[ChunkAlignment], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher sequences right-padded to the longest: ids (B, L) int64 (pads are id 0) and the attention
    mask (B, L) (1 on real tokens). A causal model's logits at real positions never see a pad after them. A
    chunk with no teacher token gets one attended pad, so no attention row is all masked (its logits would be
    NaN); none of its positions is aligned."""
    length = max(1, max(len(a.teacher_ids) for a in alignments))
    ids = np.zeros((len(alignments), length), dtype=np.int64)
    mask = np.zeros((len(alignments), length), dtype=np.int64)
    for row, a in enumerate(alignments):
        ids[row, :len(a.teacher_ids)] = a.teacher_ids
        mask[row, :max(1, len(a.teacher_ids))] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def map_onto(flat: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]], vocab_size: int) -> torch.Tensor:
    """(R, V_t) teacher probabilities -> (R, V) on student ids: out[:, s] = sum of flat[:, t] over the teacher
    ids t mapped to s, one injective layer at a time (in a fixed order: the same bits on every device). The
    first layer, which holds most ids, is one column gather and a mask; the rest add their few columns."""
    if not layers:
        return torch.zeros(flat.shape[0], vocab_size, dtype=flat.dtype, device=flat.device)
    teacher_ids, student_ids = layers[0]
    source = torch.zeros(vocab_size, dtype=torch.int64, device=flat.device)
    source[student_ids] = teacher_ids
    has = torch.zeros(vocab_size, dtype=flat.dtype, device=flat.device)
    has[student_ids] = 1.0
    out = flat.index_select(1, source).mul_(has)  # (R, V): column 0 stands in where nothing maps, then zeroed
    for teacher_ids, student_ids in layers[1:]:
        out[:, student_ids] += flat[:, teacher_ids]
    return out


def mixed_sample_inputs(probs: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Positions no teacher aligns have no distribution to draw from: a one-hot on id 0 stands in (its draws
    are zeroed afterwards), so the generator's stream is the same whatever is aligned."""
    none = count == 0
    if bool(none.any()):
        probs[..., 0] = torch.where(none, torch.ones_like(probs[..., 0]), probs[..., 0])
    return probs


def zero_unaligned(parts: list[torch.Tensor], count: torch.Tensor) -> list[torch.Tensor]:
    """Sampled targets [ids, p, weights] (B, T, N) with zeros where no teacher is aligned."""
    keep = (count > 0).unsqueeze(-1)
    return [torch.where(keep, part, torch.zeros_like(part)) for part in parts]


__all__ = ["Aligner", "MixedEnsemble", "map_onto", "padded"]
