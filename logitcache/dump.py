"""`dump`: run the teachers once over every chunk and write the compressed top-k (or sampled) cache.

Work is split in blocks of `block_rows` rows; rank r of W handles blocks b with b % W == r, so ranks
(and nodes on a shared filesystem) need nothing but their rank and the world size. Each block is
computed in fixed batches, so its bytes never depend on what else ran: a resumed or multi-rank dump
is identical to a single uninterrupted one. A writer thread encodes, compresses and writes blocks
while the teachers compute the next one; a block counts only once its `done` marker is written.
"""
from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from . import distributed as D
from .cache import PROB_DTYPES, CacheLayout, CacheStore, create_cache, same_attrs
from .configs import check, to_dict
from .data import load_data, spread_indices
from .ensemble import COMBINES, Ensemble, load_teachers
from .errors import LogitcacheError
from .progress import NULL_PROGRESS, ProgressHook
from .train import autocast_for

log = logging.getLogger(__name__)

TARGETS = ("topk", "sample")


@dataclass(frozen=True)
class DumpConfig:
    data: Path
    teachers: tuple[Path, ...]
    out: Path
    split: str = "train"
    top_k: int = 32
    temperature: float = 2.0
    combine: str = "mean-logits"
    prob_dtype: str = "sqrt-u7"
    targets: str = "topk"  # topk | sample
    samples: int = 16  # sample targets: draws per position
    proposal_temperature: float = 1.0  # sample targets: q = p^(1/this), renormalised
    batch_size: int = 16
    block_rows: int = 256
    max_chunks: int = 0  # 0: every chunk of the split; else N chunks (see row_selection)
    row_selection: str = "spread"  # spread: N chunks evenly spaced over the split; first: the first N
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self):
        check(len(self.teachers) >= 1, "at least one teacher is required")
        check(self.split in ("train", "dev", "test"), f"split must be train|dev|test, got {self.split!r}")
        check(self.top_k > 0, f"top_k must be positive, got {self.top_k}")
        check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        check(self.combine in COMBINES, f"combine must be one of {', '.join(COMBINES)}, got {self.combine!r}")
        check(self.prob_dtype in PROB_DTYPES, f"prob_dtype must be one of {', '.join(PROB_DTYPES)}, got {self.prob_dtype!r}")
        check(self.targets in TARGETS, f"targets must be topk|sample, got {self.targets!r}")
        check(0 < self.samples <= 255, f"samples must be in 1..255, got {self.samples}")
        check(self.proposal_temperature > 0, "proposal_temperature must be positive")
        check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        check(self.block_rows > 0, f"block_rows must be positive, got {self.block_rows}")
        check(self.max_chunks >= 0, "max_chunks must be >= 0")
        check(self.row_selection in ("spread", "first"), f"row_selection must be spread|first, got {self.row_selection!r}")

    @property
    def width(self) -> int:
        """K: kept ids per position (top-k), or the padded number of unique sampled ids."""
        return self.top_k if self.targets == "topk" else self.samples


@dataclass
class DumpReport:
    path: str = ""
    n_rows: int = 0
    blocks_written: int = 0
    blocks_skipped: int = 0
    tokens: int = 0
    seconds: float = 0.0
    teacher_seconds: float = 0.0
    tokens_per_s: float = 0.0
    rank: int = 0
    world: int = 1


def cache_attrs(config: DumpConfig, data, teacher_infos: list[dict], n_rows: int) -> dict:
    """The attributes that define a cache; a resume must find exactly these (but the package version)."""
    return {
        "kind": "cache", "package_version": __version__, "targets": config.targets,
        "teachers": teacher_infos, "combine": config.combine, "temperature": config.temperature,
        "samples": config.samples if config.targets == "sample" else None,
        "proposal_temperature": config.proposal_temperature if config.targets == "sample" else None,
        "seed": config.seed if config.targets == "sample" else None,
        "data_fingerprint": data.fingerprint, "tokenizer_sha256": data.attrs["tokenizer_sha256"],
        "split": config.split, "rows": {"selection": config.row_selection if config.max_chunks else "all",
                                        "count": n_rows, "of": data.store.num_rows(config.split)},
        "config": to_dict(config),
    }


def select_rows(split_rows: np.ndarray, config: DumpConfig) -> np.ndarray:
    """The chunks a dump caches: all, the first N, or N spread evenly over the split."""
    if not config.max_chunks:
        return split_rows
    if config.row_selection == "first":
        return split_rows[: config.max_chunks]
    return split_rows[spread_indices(split_rows.shape[0], config.max_chunks)]


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


class BlockWriter:
    """Background writer: encodes, compresses and commits blocks while the teachers keep computing."""

    def __init__(self, store: CacheStore, depth: int = 2):
        self.store = store
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="logitcache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.store.write_block(*item)
                    self.written += 1
                except BaseException as exc:  # disk full, permissions: reported by the main thread
                    self.error = exc

    def put(self, *item) -> None:
        self.raise_if_failed()
        self.queue.put(item)

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise LogitcacheError(
                f"writing the cache failed ({self.error.__class__.__name__}: {self.error}); completed blocks are "
                "kept: fix the cause (disk space?) and rerun with --resume"
            ) from None

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.raise_if_failed()


def open_or_create(config: DumpConfig, layout: CacheLayout, attrs: dict, resume: bool, env: D.DistEnv) -> CacheStore:
    out = Path(config.out)
    if env.is_main:
        if out.exists():
            if not resume:
                raise LogitcacheError(f"{out} already exists; pass --resume to continue it, or choose another --out")
            store = CacheStore(out, mode="r+")
            differs = same_attrs(store.attrs, attrs | {
                k: store.attrs.get(k) for k in ("n_rows", "seq_len", "k", "vocab_size", "block_rows", "n_blocks",
                                               "prob_dtype", "with_weights", "encodings", "schema_version")})
            if differs:
                raise LogitcacheError(f"cannot resume {out}: it was made with a different config ({', '.join(differs)})")
            if (store.layout.n_rows, store.layout.k, store.layout.block_rows, store.layout.prob_dtype) != (
                    layout.n_rows, layout.k, layout.block_rows, layout.prob_dtype):
                raise LogitcacheError(f"cannot resume {out}: its layout differs from this config")
            return store
        out.parent.mkdir(parents=True, exist_ok=True)
        create_cache(out, layout, attrs)
        return CacheStore(out, mode="r+")
    # other ranks: wait for rank 0 to create it (atomic rename), nothing else is shared
    deadline = time.monotonic() + 600
    while not (out / "zarr.json").is_file():
        if time.monotonic() > deadline:
            raise LogitcacheError(f"rank {env.rank}: {out} was not created by rank 0 within 10 minutes")
        time.sleep(0.2)
    return CacheStore(out, mode="r+")


def dump(config: DumpConfig, resume: bool = False, progress: ProgressHook = NULL_PROGRESS) -> DumpReport:
    env = D.dist_env()
    device = D.pick_device(config.device, env)
    data = load_data(config.data)
    rows = select_rows(data.store.split(config.split), config)
    check(rows.shape[0] > 0, f"split '{config.split}' has no chunks")
    models, infos = load_teachers(list(config.teachers), device, data.attrs["tokenizer_sha256"])
    if infos[0]["vocab_size"] != data.vocab_size:
        raise LogitcacheError(f"teachers have vocabulary {infos[0]['vocab_size']}, the data's tokenizer {data.vocab_size}")
    check(config.width <= data.vocab_size, f"top_k {config.width} is larger than the vocabulary ({data.vocab_size})")
    ensemble = Ensemble(models, config.combine, config.temperature, device, autocast_for(device, config.precision))
    layout = CacheLayout(rows.shape[0], data.seq_len, config.width, data.vocab_size, config.block_rows,
                         config.prob_dtype, with_weights=config.targets == "sample")
    attrs = cache_attrs(config, data, infos, rows.shape[0])
    attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    store = open_or_create(config, layout, attrs, resume, env)

    done = store.done_mask()
    mine = [b for b in range(layout.n_blocks) if b % env.world == env.rank]
    todo = [b for b in mine if not done[b]]
    report = DumpReport(path=str(config.out), n_rows=rows.shape[0], blocks_skipped=len(mine) - len(todo),
                        rank=env.rank, world=env.world)
    progress.start("dump", sum(stop - start for start, stop in map(layout.block_range, todo)))
    writer = BlockWriter(store)
    t_start = time.perf_counter()
    try:
        for block in todo:
            start, stop = layout.block_range(block)
            block_tokens = rows[start:stop]
            ids_parts, prob_parts, weight_parts = [], [], []
            t0 = time.perf_counter()
            generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + block)
            for b0 in range(0, block_tokens.shape[0], config.batch_size):
                input_ids = torch.from_numpy(block_tokens[b0:b0 + config.batch_size].astype(np.int64)).to(device)
                if config.targets == "topk":
                    ids, probs = ensemble.topk(input_ids, config.top_k)  # (b, T, K)
                else:
                    ids, probs, weights = sample_targets(ensemble.probs(input_ids), config.samples,
                                                         config.proposal_temperature, generator)
                    weight_parts.append(weights.cpu().numpy())
                ids_parts.append(ids.cpu().numpy())
                prob_parts.append(probs.cpu().numpy())
                progress.update(input_ids.shape[0])
            report.teacher_seconds += time.perf_counter() - t0
            writer.put(block, block_tokens, np.concatenate(ids_parts), np.concatenate(prob_parts),
                       np.concatenate(weight_parts) if weight_parts else None)
            report.tokens += block_tokens.size
    finally:
        writer.close()
        progress.finish()
    report.blocks_written = writer.written
    report.seconds = time.perf_counter() - t_start
    report.tokens_per_s = report.tokens / max(report.seconds, 1e-9)
    log.info("rank %d: wrote %d blocks (%d already done) at %.0f tokens/s", env.rank, report.blocks_written,
             report.blocks_skipped, report.tokens_per_s)
    return report
