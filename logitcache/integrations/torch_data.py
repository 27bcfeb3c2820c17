"""The cache as a PyTorch dataset (docs/architecture.md, "Trainer integrations"; README, "Use the cache in
your own trainer").

    from logitcache.torch import CacheDataset, CacheOrderSampler, collate, distill_loss
    dataset = CacheDataset("work/cache.zarr", "work/data")          # a path or s3://..., checked against the data
    loader = DataLoader(dataset, batch_size=16, shuffle=True, collate_fn=collate, num_workers=2)
    for batch in loader:                                              # input_ids, labels (B, T), topk_ids ...
        logits = model(input_ids=batch["input_ids"]).logits
        loss, kl, ce = distill_loss(batch, logits=logits, **dataset.loss_options())

One item per cache row (one chunk of T tokens), a dict of tensors named as the batch dict every loss
reads (logitcache/targets.py, BATCH_KEYS) plus `labels` (a copy of input_ids: Hugging Face models shift
labels themselves; the distillation loss shifts input_ids). A block is read, checksum-verified and decoded
once, then kept among the last `blocks_in_memory` blocks of this process; an item is returned only from a
block whose checksum matched. The dataset pickles as its location and settings (no open store, no
decoded block), so DataLoader workers (fork or spawn) and `DistributedSampler` ranks each open their own.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from ..data.prepared import check_cache_matches, load_data
from ..errors import LogitcacheError
from ..store import CacheReader
from ..store.cache import same_attrs
from ..store.location import Location
from ..targets import Targets, batch_arrays
from ..training.loader import step_plan


class CacheDataset(Dataset):
    """Map-style dataset over a complete cache, one item per chunk: {"input_ids": (T,) int64, "labels": (T,)
    int64, "topk_ids": (T, K) int64, "topk_probs": (T, K) float32, and where the cache holds them
    "sample_weights" (T, K) float32, "mass_count" (T,), "teacher_count" (T,) uint8}.

    `data`: the prepared data dir the cache was dumped from; when given, a cache of another tokenizer, data
    or vocabulary is refused. `split`: the split the cache must have been dumped from (a cache of another
    split is refused: training on the dev split trains on the text it is evaluated on). `by_prob`: each
    position's entries by decreasing probability (as `open_cache(...).read`), else by ascending id (the
    loader's order; the losses are sums over K). `verify`: check each block's checksum (always, unless
    you turn it off)."""

    def __init__(self, cache: "str | Path | Location", data: "str | Path | None" = None, split: str = "train", *,
                 by_prob: bool = False, verify: bool = True, blocks_in_memory: int = 16):
        self.cache = cache if isinstance(cache, Location) else str(cache)
        self.by_prob, self.verify = by_prob, verify
        self.blocks_in_memory = max(1, blocks_in_memory)
        reader = CacheReader(self.cache, require_complete=True, verify=verify)
        if data is not None:
            check_cache_matches(reader, load_data(data))
        cache_split = reader.attrs.get("split", "train")
        if cache_split != split:
            raise LogitcacheError(f"cache {reader.store.path} was dumped from the '{cache_split}' split, not '{split}'")
        self.attrs, self.layout = reader.attrs, reader.layout
        self._open(reader)

    def _open(self, reader: CacheReader | None = None) -> None:
        self._reader = reader
        self._blocks: OrderedDict[int, Targets] = OrderedDict()
        self._lock = threading.Lock()

    def _reopen(self) -> CacheReader:
        """The reader of a process that got this dataset pickled (a DataLoader worker): the same complete
        cache, or a refusal. A cache replaced or re-dumped at the location since would mix blocks of two
        dumps into one epoch."""
        reader = CacheReader(self.cache, require_complete=True, verify=self.verify)
        changed = same_attrs(reader.attrs, self.attrs, ignore=())
        if changed:
            raise LogitcacheError(f"cache {reader.store.path} changed since this dataset opened it (attributes "
                                  f"{', '.join(changed)}): open a new CacheDataset")
        return reader

    def __getstate__(self) -> dict:  # the location and settings only: each process opens its own reader
        return {k: v for k, v in self.__dict__.items() if k not in ("_reader", "_blocks", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.layout.n_rows

    @property
    def vocab_size(self) -> int:
        """The data tokenizer's vocabulary (a student's embedding needs at least this many rows)."""
        return int(self.layout.vocab_size)

    @property
    def seq_len(self) -> int:
        """T: tokens per chunk."""
        return int(self.layout.seq_len)

    @property
    def temperature(self) -> float:
        """The temperature the cache's probabilities were made at."""
        return float(self.attrs["temperature"])

    @property
    def targets(self) -> str:
        """The cache's kind of targets: topk, sample or mass."""
        return str(self.attrs.get("targets", "topk"))

    def loss_options(self, alpha: float = 0.5, tail: str = "bucket", reduction: str = "token") -> dict:
        """The keyword arguments of `distill_loss` for this cache at its own temperature (train-student's
        defaults for alpha, tail and reduction)."""
        return dict(alpha=alpha, temperature=self.temperature, tail=tail, reduction=reduction, targets=self.targets)

    def block(self, block: int) -> Targets:
        """Block `block` decoded (checksum-verified when `verify`), from memory when it is among the last ones."""
        with self._lock:
            if block in self._blocks:
                self._blocks.move_to_end(block)
                return self._blocks[block]
            if self._reader is None:
                self._reader = self._reopen()
            reader = self._reader
        decoded = reader.read_block(block, by_prob=self.by_prob)  # raises CacheCorruptError on a bad checksum
        with self._lock:
            self._blocks[block] = decoded
            while len(self._blocks) > self.blocks_in_memory:
                self._blocks.popitem(last=False)
        return decoded

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of a cache of {len(self)} rows")
        block, row = divmod(index, self.layout.block_rows)
        arrays = batch_arrays(self.block(block).rows(row, copy=True))  # (T, ...) each
        item = {key: torch.from_numpy(a) for key, a in arrays.items()}
        item["labels"] = item["input_ids"].clone()
        return item


def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Items of a CacheDataset -> the batch dict: every key stacked, (B, T) and (B, T, K)."""
    keys = list(items[0])
    if any(list(item) != keys for item in items):
        raise ValueError("items with different keys cannot form one batch")
    return {key: torch.stack([item[key] for item in items]) for key in keys}


class CacheOrderSampler(Sampler[int]):
    """train-student's data order over a CacheDataset: blocks in a seeded random order through a shuffle
    buffer of `buffer_rows` rows, cut into batches of `batch_size` rows (the rest of an epoch dropped), each
    batch's rows ascending; with `world` > 1, rank `rank` gets its slice of each batch (batch_size / world
    rows, as train-student's ranks do). Rows of one block arrive close together, so the dataset's blocks in
    memory serve most items. Give the DataLoader batch_size / world as its batch size; call `set_epoch`
    each epoch (Hugging Face's Trainer does)."""

    def __init__(self, dataset: CacheDataset, batch_size: int, seed: int = 0, buffer_rows: int = 4096,
                 rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the world size {world}")
        self.n_rows, self.block_rows = len(dataset), dataset.layout.block_rows
        self.batch_size, self.seed, self.buffer_rows = batch_size, seed, max(1, buffer_rows)
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_rows // self.batch_size * (self.batch_size // self.world)

    def __iter__(self) -> Iterator[int]:
        for rows in step_plan(self.n_rows, self.block_rows, self.buffer_rows, self.seed, self.epoch,
                              self.batch_size, self.rank, self.world):
            yield from rows.tolist()

