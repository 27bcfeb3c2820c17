"""The writing side of a cache: writer threads that encode and commit blocks (BlockWriter), and which
device kinds wrote a cache's blocks, a list in the attributes of the `done` array.

The root attributes fix one compute precision per cache (`precision`, checked by every writer before
its first block: dump/teaching.load_teaching, dump/lifecycle.check_resumable), so precisions never mix. Device kinds may
mix (a Ray cluster of several GPU models, CPU workers beside GPU ones); each writer adds its kind to
`done/zarr.json`'s attributes ("writers": [{"device", "precision", "torch"}], sorted) before it commits
a block, so a reader can tell which kinds a cache's bytes came from (docs/architecture.md, "Determinism
across devices"). Writers of the same kind write the same list, so a cache written by one process and one
written by many workers of one kind hold the same bytes. The list lives outside the root attributes, which
the resume check and `copy` compare whole, and `copy` takes it verbatim with the metadata.
"""
from __future__ import annotations

import collections
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import LogitcacheError
from .cache import Targets, CacheStore

WRITERS_KEY = "writers"
DONE_METADATA = "done/zarr.json"


def device_kind(device, precision: str) -> dict:
    """A writer's kind: the device model (cpu, or cuda:<GPU name>), the precision and the torch build."""
    import torch

    name = device.type
    if device.type == "cuda":
        name = f"cuda:{torch.cuda.get_device_name(device)}"
    return {"device": name, "precision": precision, "torch": torch.__version__}


def writers_of(store) -> list[dict]:
    """The writer kinds recorded in a cache (a CacheStore); [] for a cache written before the record."""
    raw = store.location.read_bytes(DONE_METADATA)
    try:
        return list(json.loads(raw).get("attributes", {}).get(WRITERS_KEY, [])) if raw else []
    except (ValueError, AttributeError):
        return []


def record_writer(store, kind: dict) -> bool:
    """Add `kind` to the cache's writer list unless it is there; True when it wrote. A read, then (only for
    a kind not yet listed) one atomic rewrite of `done/zarr.json`; two new kinds starting at the same moment
    can drop one, so Ray workers call this again before every block and the driver once at the end."""
    raw = store.location.read_bytes(DONE_METADATA)
    document = json.loads(raw)
    attributes = document.setdefault("attributes", {})
    listed = attributes.get(WRITERS_KEY, [])
    if kind in listed:
        return False
    attributes[WRITERS_KEY] = sorted(listed + [kind], key=lambda k: json.dumps(k, sort_keys=True))
    store.location.write_bytes(DONE_METADATA, json.dumps(document, indent=2).encode())
    return True


FLOAT16_MAX = float(np.finfo(np.float16).max)  # sample_weights are stored as float16


def check_weights_fit(block: int, weights: np.ndarray) -> None:
    """Refuse importance weights (rows, T, N) that float16 would store as inf (p/q explodes where a proposal
    sharper than p, --proposal-temperature < 1, draws an id it gives far less mass than p does)."""
    worst = float(weights.max(initial=0.0))
    if not worst <= FLOAT16_MAX:
        raise LogitcacheError(f"block {block}: a sample weight count/N * p/q reaches {worst:.4g}, above float16's "
                              f"{FLOAT16_MAX:.0f} (the stored type); raise --proposal-temperature (at 1 every weight "
                              "is at most 1) and rerun with --overwrite")


def write_host_block(store: CacheStore, block: int, tokens: np.ndarray, copy) -> None:
    """Runs on a writer thread: wait for the block's device-to-host copy, then encode and commit it."""
    arrays = copy.wait()  # {"ids", "probs", and "weights", "mass_count", "teacher_count" where the cache has them}
    if arrays.get("weights") is not None:
        check_weights_fit(block, arrays["weights"])
    store.write_block(block, Targets(tokens, **arrays))


class BlockWriter:
    """Encodes, compresses, checksums and commits blocks on `threads` background threads while the
    teachers keep computing (numpy and zstd release the GIL, so the threads use several cores).

    Each block is committed on its own: its data, then its checksum, then its `done` marker, so blocks
    may finish in any order and a kill leaves every block either committed or redone by --resume,
    exactly as with one thread; each block's bytes do not depend on the others, so the store is
    byte-identical to a serial write. Memory: at most `threads + depth` blocks wait in memory.
    """

    def __init__(self, store: CacheStore, threads: int = 2, depth: int = 2):
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="logitcache-writer")
        self.pending: collections.deque = collections.deque()
        self.limit = max(1, threads) + depth
        self.error: BaseException | None = None
        self.written = 0

    def _reap(self, wait_for_one: bool) -> None:
        while self.pending and (wait_for_one or self.pending[0].done()):
            future = self.pending.popleft()
            wait_for_one = False
            exc = future.exception()
            if exc is not None:
                self.error = self.error or exc  # disk full, permissions: reported by the main thread
            else:
                self.written += 1

    def put(self, *item) -> None:
        self._reap(wait_for_one=False)
        self.raise_if_failed()
        while len(self.pending) >= self.limit:
            self._reap(wait_for_one=True)
        self.pending.append(self.pool.submit(write_host_block, self.store, *item))

    def raise_if_failed(self) -> None:
        if isinstance(self.error, LogitcacheError):  # a refusal with its own message
            raise self.error
        if self.error is not None:
            raise LogitcacheError(
                f"writing the cache failed ({self.error.__class__.__name__}: {self.error}); completed blocks are "
                "kept: fix the cause (disk space?) and rerun with --resume"
            ) from None

    def close(self) -> None:
        while self.pending:
            self._reap(wait_for_one=True)
        self.pool.shutdown(wait=True)
        self.raise_if_failed()
