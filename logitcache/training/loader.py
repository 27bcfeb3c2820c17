"""Streaming batches from a cache: random block order, a bounded shuffle buffer, background decode.

The order of an epoch is a pure function of (seed, epoch): blocks in a random order feed a shuffle
buffer of `buffer_rows` rows from which rows leave at random. The plan is simulated on row indices
first (cheap), so a resumed run can start at any step without decoding what came before. A
producer thread decodes blocks (a small thread pool, `prefetch_blocks` ahead) and assembles whole
batches (pinned on CUDA) into a queue; memory is bounded by the rows waiting in the buffer.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from ..errors import CacheCorruptError
from ..store import CacheReader
from ..targets import Targets, batch_arrays
from ..runtime import device as D

log = logging.getLogger(__name__)


def emission_order(n_rows: int, block_rows: int, buffer_rows: int, seed: int, epoch: int) -> np.ndarray:
    """(n_rows,) row indices in the order one epoch emits them."""
    rng = np.random.default_rng([seed, epoch, 7])
    n_blocks = (n_rows + block_rows - 1) // block_rows
    buffer: list[int] = []
    order: list[int] = []
    for block in rng.permutation(n_blocks):
        buffer.extend(range(block * block_rows, min((block + 1) * block_rows, n_rows)))
        while len(buffer) >= buffer_rows:
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            order.append(buffer.pop())
    rng.shuffle(buffer)
    order.extend(buffer)
    return np.asarray(order, dtype=np.int64)


def step_plan(n_rows: int, block_rows: int, buffer_rows: int, seed: int, epoch: int, batch_size: int,
              rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """Per step of one epoch, the rows rank `rank` of `world` trains on, ascending: the epoch's emission order
    cut into whole batches of `batch_size` (the rest of the epoch is dropped), each split into `world` equal
    slices. train-student's data order; `logitcache.torch.CacheOrderSampler` yields the same."""
    order = emission_order(n_rows, block_rows, buffer_rows, seed, epoch)
    per_rank = batch_size // world
    return [np.sort(order[s * batch_size:(s + 1) * batch_size][rank * per_rank:(rank + 1) * per_rank])
            for s in range(n_rows // batch_size)]


class CacheRows:
    """A `BatchSource` over a cache. `targets=False` reads tokens only (the alpha = 1 baseline)."""

    def __init__(self, reader: CacheReader, seed: int, buffer_rows: int = 4096, targets: bool = True,
                 skip_bad_blocks: bool = False, prefetch_blocks: int = 4, workers: int = 2, pin: bool = False):
        self.reader = reader
        self.n_rows = len(reader)
        self.block_rows = reader.layout.block_rows
        self.seed = seed
        self.buffer_rows = max(1, buffer_rows)
        self.targets = targets
        self.skip_bad_blocks = skip_bad_blocks
        self.prefetch_blocks = max(1, prefetch_blocks)
        self.workers = max(1, workers)
        self.pin = pin
        self.skipped_blocks: set[int] = set()

    def _load(self, block: int):
        try:  # by id, not by probability: the losses are sums over K
            return self.reader.read_block(block, targets=self.targets, by_prob=False)
        except CacheCorruptError as exc:
            if not self.skip_bad_blocks:
                raise
            log.warning("skipping bad block %d: %s", block, exc)
            return exc

    def batches(self, epoch: int, start_step: int, batch_size: int, env: D.DistEnv) -> Iterator[dict]:
        plan = step_plan(self.n_rows, self.block_rows, self.buffer_rows, self.seed, epoch, batch_size, env.rank,
                         env.world)[start_step:]
        out: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(plan, out, stop), daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)

    def _produce(self, plan: list[np.ndarray], out: queue.Queue, stop: threading.Event) -> None:
        try:
            # blocks in order of first use; only this rank's remaining rows are kept once decoded
            first_use = list(dict.fromkeys((np.concatenate(plan) // self.block_rows).tolist())) if plan else []
            needed = set(np.concatenate(plan).tolist()) if plan else set()
            rows_data: dict[int, tuple] = {}
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="logitcache-decode") as pool:
                pending: deque = deque()
                next_block = 0

                def top_up():
                    nonlocal next_block
                    while next_block < len(first_use) and len(pending) < self.prefetch_blocks:
                        block = first_use[next_block]
                        pending.append((block, pool.submit(self._load, block)))
                        next_block += 1

                loaded: set[int] = set()
                for rows in plan:
                    if stop.is_set():
                        return
                    for block in sorted(set((rows // self.block_rows).tolist())):
                        while block not in loaded:
                            top_up()
                            b, future = pending.popleft()
                            decoded = future.result()
                            loaded.add(b)
                            if isinstance(decoded, CacheCorruptError):
                                self.skipped_blocks.add(b)
                                continue
                            start = b * self.block_rows
                            for i in range(decoded.n_rows):
                                if start + i in needed:
                                    rows_data[start + i] = decoded.rows(slice(i, i + 1), copy=True)
                    parts = [rows_data.pop(r) for r in rows.tolist() if r in rows_data]
                    top_up()
                    out.put(self._collate(parts))  # even empty: every rank yields once per planned step
            out.put(None)
        except BaseException as exc:  # surfaced in the consumer
            out.put(exc)

    def _collate(self, parts: list[Targets]) -> dict:
        """One step's rows -> the batch dict every loss reads ({key: (B, ...) tensor}, targets.BATCH_KEYS)."""
        if not parts:  # every row of this step sat in a skipped bad block: (0, T), (0, T, K) ...
            return {key: torch.from_numpy(a) for key, a in batch_arrays(self.empty).items()}
        return {key: torch.from_numpy(a).pin_memory() if self.pin else torch.from_numpy(a)
                for key, a in batch_arrays(Targets.concat(parts)).items()}

    @property
    def empty(self) -> Targets:
        """Zero rows with this source's fields (what a step whose rows all sat in skipped blocks yields)."""
        t, k = self.reader.layout.seq_len, self.reader.layout.k
        layout = self.reader.layout
        fields = {"tokens": np.zeros((0, t), np.int64)}
        if self.targets:
            fields |= {"ids": np.zeros((0, t, k), np.int64), "probs": np.zeros((0, t, k), np.float32)}
            fields |= {"weights": np.zeros((0, t, k), np.float32)} if layout.with_weights else {}
            fields |= {"mass_count": np.zeros((0, t), np.uint8)} if layout.ragged else {}
            fields |= {"teacher_count": np.zeros((0, t), np.uint8)} if layout.with_teacher_count else {}
        return Targets(**fields)
