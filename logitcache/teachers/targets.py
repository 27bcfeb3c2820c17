"""A block's targets from the teachers: top-k, importance-sampled or mass (ragged) ids and probabilities,
computed on the device in fixed batches (the same batches on every engine, so a block's bytes never
depend on who computes it) and started on their way to the host."""
from __future__ import annotations

import typing

import numpy as np
import torch

from ..config import DumpConfig


class Teachers(typing.Protocol):
    """What block_targets needs of an ensemble: ensemble.Ensemble (teachers on the data's tokenizer) and
    mixed.MixedEnsemble (teachers on tokenizers of their own) both are one."""

    counted: bool  # whether batch_targets ends with the teacher count (B, T) of each position
    stats: np.ndarray | None  # (teachers, len(mixed.STATS)) counts of what ran here (mixed.coverage_of), or None

    def batch_targets(self, config: DumpConfig, input_ids: torch.Tensor, cache_rows: np.ndarray,
                      generator: torch.Generator) -> list[torch.Tensor]:
        """One batch's [ids, probs] (B, T, K), then the sampled targets' weights (B, T, K) or the mass
        count (B, T), then the teacher count (B, T) when `counted`; `cache_rows` (B,): the cache rows the
        batch holds (teachers on tokenizers of their own read their text)."""
        ...


def sample_targets(probs: torch.Tensor, n_samples: int, proposal_temperature: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw N ids per position from q and keep the unique ones.

    probs (B, T, V) ensemble p at T. Returns ids (B, T, N) (unique, padded with 0), p_i (B, T, N)
    (0 at padding) and weights w_i = (count_i / N) * p_i / q_i (B, T, N) (0 at padding), so
    E[sum_i w_i f(i)] = sum_v p_v f(v) for any f.
    """
    b, t, v = probs.shape
    flat = probs.reshape(b * t, v)
    if proposal_temperature == 1.0:
        proposal = flat
    else:
        proposal = torch.softmax(torch.log(flat.clamp(min=1e-30)) / proposal_temperature, dim=-1)
    draws = torch.multinomial(proposal, n_samples, replacement=True, generator=generator)  # (M, N)
    draws, _ = draws.sort(dim=-1)
    is_new = torch.ones_like(draws, dtype=torch.bool)
    is_new[:, 1:] = draws[:, 1:] != draws[:, :-1]
    slot = is_new.long().cumsum(-1) - 1  # (M, N) index of each draw's unique id
    ids = torch.zeros_like(draws).scatter_(1, slot, draws)
    counts = torch.zeros_like(draws, dtype=torch.float32).scatter_add_(1, slot, torch.ones_like(draws, dtype=torch.float32))
    valid = counts > 0
    p_i = torch.where(valid, flat.gather(1, ids), torch.zeros_like(counts))
    q_i = proposal.gather(1, ids).clamp(min=1e-30)
    weights = torch.where(valid, counts / n_samples * p_i / q_i, torch.zeros_like(counts))
    return ids.reshape(b, t, -1), p_i.reshape(b, t, -1), weights.reshape(b, t, -1)


def mass_targets(ids: torch.Tensor, probs: torch.Tensor, mass: float) -> list[torch.Tensor]:
    """Mass targets from the top max-k: ids and probs (B, T, K) by decreasing probability -> [ids, probs,
    count (B, T) int32], count the fewest leading ids whose probabilities sum to at least `mass` (all K when
    they never do). Only the first count slots are stored; the rest go to the tail."""
    below = probs.cumsum(-1) < mass  # (B, T, K): the running sum before it reaches the mass
    count = (below.sum(-1) + 1).clamp(max=ids.shape[-1]).to(torch.int32)  # (B, T)
    return [ids, probs, count]


class HostCopy:
    """A block's named results ({"ids": (rows, T, K), "probs": ..., ...}, the fields of logitcache.targets.Targets) on their way to
    the host. On CUDA: non-blocking copies into pinned host tensors (torch's caching host allocator recycles
    them, so successive blocks double-buffer without a cudaHostAlloc each) and one event; the writer thread
    waits on that event, so the teachers' loop never synchronises with the device per batch or per block.
    On CPU the tensors are already there."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.event = None
        first = next(iter(tensors.values()), None)
        if first is not None and first.device.type == "cuda":
            hosts = {name: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for name, t in tensors.items()}
            for name, tensor in tensors.items():
                hosts[name].copy_(tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
            tensors = hosts
        elif first is not None and first.device.type != "cpu":  # other accelerators (mps): a plain copy, here
            tensors = {name: t.cpu() for name, t in tensors.items()}
        self.tensors = tensors

    def wait(self) -> dict[str, np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        return {name: t.numpy() for name, t in self.tensors.items()}


def gather_block(parts: list[list[torch.Tensor]], counted: bool = False, ragged: bool = False) -> HostCopy:
    """Per-batch device results [[ids, probs(, weights | mass count)(, teacher_count)], ...] -> one HostCopy of
    the block's named arrays (`counted`: the last column is teacher_count; `ragged`: the third is the mass
    count, else a third is the sampled targets' weights). ids become int32 on the device first (vocabularies
    < 2^31): half the bytes across the bus."""
    columns = [torch.cat(column) for column in zip(*parts)]
    columns[0] = columns[0].to(torch.int32)
    names = ["ids", "probs"]
    if len(columns) - counted > 2:
        names.append("mass_count" if ragged else "weights")
    names += ["teacher_count"] if counted else []
    assert len(names) == len(columns), (names, len(columns))
    return HostCopy(dict(zip(names, columns)))


def block_targets(ensemble: Teachers, config: DumpConfig, block: int, block_tokens: np.ndarray,
                  device: torch.device, on_rows=lambda n: None) -> HostCopy:
    """One block's targets, computed in fixed batches of `config.batch_size` rows (the same batches on
    every engine, so a block's bytes do not depend on who computes it); the device-to-host copy is
    started, not awaited. `block_tokens`: (rows, T) ids."""
    parts = []  # per batch: [ids, probs(, weights)] (b, T, K) (, mass count (b, T)) (, teacher_count (b, T)), on the device
    generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + block)
    for b0 in range(0, block_tokens.shape[0], config.batch_size):
        input_ids = torch.from_numpy(block_tokens[b0:b0 + config.batch_size].astype(np.int64)).to(device)
        cache_rows = np.arange(input_ids.shape[0]) + block * config.block_rows + b0
        parts.append(ensemble.batch_targets(config, input_ids, cache_rows, generator))
        on_rows(input_ids.shape[0])
    return gather_block(parts, counted=ensemble.counted, ragged=config.targets == "mass")
