"""Everything that touches Zarr: the token store (`tokens.zarr`) and the logit cache (`cache.zarr`).

Cache layout (DESIGN.md section 4): one Zarr v3 group, rows = chunks, T = positions, K = kept ids.
  tokens      (N, T)    uint16/uint32      the input chunks
  topk_ids    (N, T, K) uint16/uint32      ids sorted ascending per position, stored as deltas
  topk_probs  (N, T, K) float16 | uint8    probabilities in the same (id) order; `sqrt-uB` stores
                                           round(sqrt(p) * L) so p = (code / L)^2; `log-uB` stores
                                           round(-log(p) / step) so p = exp(-code * step)
  done        (B,)      uint8              1 once block b's data and checksum are written
  checksum    (B,)      uint32             crc32c over block b's stored (encoded) arrays
Each array is chunked by whole blocks of `block_rows` rows, so every block is one storage chunk per
array and ranks writing different blocks never touch the same file. `done` and `checksum` have one
element per storage chunk for the same reason. The public reader returns plain ids and
probabilities, sorted by decreasing probability.
"""
from __future__ import annotations

import functools

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from .errors import CacheCorruptError, LogitcacheError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ATTRS_KEY = "logitcache"
LOG_RANGE_NATS = 16.0  # log codes cover p in [e^-16, 1]; smaller probabilities clip to e^-16
# log-uB: B-bit codes of -log(p) (2^B levels over 16 nats), stored as uint8; the entropy coder drops
# the unused bits. Rounding in log space costs about step^2 / 24 nats of KL per token.
LOG_LEVELS = {"log-u8": 256, "log-u7": 128, "log-u6": 64}
# sqrt-uB: round(sqrt(p) * L), L = 2^B - 1. Rounding sqrt(p) uniformly gives every kept entry the
# same expected KL cost (p * (d log p)^2 is constant when d sqrt(p) is), so tiny probabilities get
# coarse codes and few bits. Measured on the demo teachers: at k = 32 it is as small as log-u7 with
# 7x less KL; at k = 128, sqrt-u7 is 42 B/token of probabilities vs 69 for log-u7. p < (0.5/L)^2
# decodes as 0 (its mass joins the tail).
SQRT_LEVELS = {"sqrt-u8": 255, "sqrt-u7": 127}
PROB_DTYPES = ("float32", "float16", *SQRT_LEVELS, *LOG_LEVELS)


def log_step(prob_dtype: str) -> float:
    return LOG_RANGE_NATS / (LOG_LEVELS[prob_dtype] - 1)


def fault_pause(variable: str) -> None:
    """Sleep $variable seconds when set: lets the fault-injection tests kill a process mid-write."""
    seconds = os.environ.get(variable)
    if seconds:
        import time

        time.sleep(float(seconds))


# ----------------------------------------------------------------------------- token store


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.uint32


def write_token_store(path: Path, splits: dict[str, np.ndarray], attrs: dict, rows_per_chunk: int = 4096) -> None:
    """Write `tokens.zarr` (one (N, T) array per split) into a temp dir, then rename into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
    for name, rows in splits.items():
        array = group.create_array(
            name, shape=rows.shape, chunks=(max(1, min(rows_per_chunk, rows.shape[0])), rows.shape[1]),
            dtype=rows.dtype, compressors=ZstdCodec(level=3), fill_value=0,
        )
        if rows.shape[0]:
            array[:] = rows
    group.attrs.update({ATTRS_KEY: attrs})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


class TokenStore:
    """Read side of `tokens.zarr`: `attrs`, and `split(name)` -> (N, T) numpy array."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise LogitcacheError(f"{self.path} is not a token store (run `logitcache prepare` first)")
        try:
            self.group = zarr.open_group(store=str(self.path), mode="r")
            self.attrs = dict(self.group.attrs[ATTRS_KEY])
        except Exception as exc:
            raise LogitcacheError(f"cannot read token store {self.path}: {exc}") from None

    def split(self, name: str) -> np.ndarray:
        if name not in self.group:
            raise LogitcacheError(f"token store {self.path} has no split '{name}'")
        return self.group[name][:]

    def num_rows(self, name: str) -> int:
        return self.group[name].shape[0] if name in self.group else 0


# ----------------------------------------------------------------------------- encodings


def encode_ids(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, T, K) ids -> (delta-coded ids sorted ascending, the sort order to apply to probs)."""
    order = np.argsort(ids, axis=-1, kind="stable")  # (n, T, K)
    sorted_ids = np.take_along_axis(ids, order, axis=-1).astype(np.int64)
    deltas = np.diff(sorted_ids, axis=-1, prepend=0)  # first id as is, then gaps (>= 1)
    return deltas.astype(token_dtype(vocab_size)), order


def decode_ids(deltas: np.ndarray) -> np.ndarray:
    return np.cumsum(deltas.astype(np.int64), axis=-1)


def encode_probs(probs: np.ndarray, prob_dtype: str) -> np.ndarray:
    if prob_dtype == "float32":
        return probs.astype(np.float32)
    if prob_dtype == "float16":
        return probs.astype(np.float16)
    if prob_dtype in SQRT_LEVELS:
        levels = SQRT_LEVELS[prob_dtype]
        return np.clip(np.rint(np.sqrt(np.clip(probs.astype(np.float64), 0, 1)) * levels), 0, levels).astype(np.uint8)
    if prob_dtype in LOG_LEVELS:
        top = LOG_LEVELS[prob_dtype] - 1
        with np.errstate(divide="ignore"):
            codes = np.rint(-np.log(probs.astype(np.float64)) / log_step(prob_dtype))
        return np.clip(np.nan_to_num(codes, nan=top, posinf=top), 0, top).astype(np.uint8)
    raise LogitcacheError(f"unknown prob dtype '{prob_dtype}' (choose from {', '.join(PROB_DTYPES)})")


def decode_probs(stored: np.ndarray, prob_dtype: str) -> np.ndarray:
    if prob_dtype in SQRT_LEVELS or prob_dtype in LOG_LEVELS:
        return _code_table(prob_dtype)[stored]  # a 256-entry lookup: 2x faster than the arithmetic
    return stored.astype(np.float32)


@functools.cache
def _code_table(prob_dtype: str) -> np.ndarray:
    """(256,) float32: the probability of every 8-bit code, computed as the decode recipe says."""
    codes = np.arange(256, dtype=np.float32)
    if prob_dtype in SQRT_LEVELS:
        return np.square(codes / np.float32(SQRT_LEVELS[prob_dtype]))
    return np.exp(-codes * np.float32(log_step(prob_dtype)))


def prob_storage_dtype(prob_dtype: str):
    return {"float32": np.float32, "float16": np.float16}.get(prob_dtype, np.uint8)


def decode_recipe(attrs: dict) -> dict:
    """How to decode the stored arrays without this package (also saved in the attributes)."""
    dtype = attrs["prob_dtype"]
    if dtype in SQRT_LEVELS:
        probs = f"p = (float32(topk_probs) / {SQRT_LEVELS[dtype]}) ** 2"
    elif dtype in LOG_LEVELS:
        probs = f"p = exp(-float32(topk_probs) * {log_step(dtype)!r})  # step = {LOG_RANGE_NATS}/{LOG_LEVELS[dtype] - 1} nats"
    else:
        probs = "p = float32(topk_probs)"
    return {
        "topk_ids": "ids = cumsum(topk_ids, axis=-1)  # ids ascending per position",
        "topk_probs": probs + "  # same order as ids",
        "order": "sort each position by decreasing p (stable) for the public reader",
        "tail": "p_tail = 1 - sum(p, axis=-1)",
    }


def normalise_topk(probs: np.ndarray) -> np.ndarray:
    """Quantisation can push a row's sum above 1; scale such rows back to exactly 1 (in place)."""
    probs = probs.astype(np.float32, copy=False)
    total = probs.sum(axis=-1)  # (..., )
    over = total > 1.0
    if over.any():
        probs[over] /= total[over][:, None]
    return probs


# ----------------------------------------------------------------------------- cache store


@dataclass(frozen=True)
class CacheLayout:
    n_rows: int
    seq_len: int
    k: int
    vocab_size: int
    block_rows: int
    prob_dtype: str
    with_weights: bool = False  # sampled targets: importance weights (float16) in `sample_weights`

    @property
    def n_blocks(self) -> int:
        return (self.n_rows + self.block_rows - 1) // self.block_rows

    def block_range(self, block: int) -> tuple[int, int]:
        start = block * self.block_rows
        return start, min(start + self.block_rows, self.n_rows)


def _blosc(typesize: int) -> BloscCodec:
    # byte-shuffle then zstd: the high bytes of small id gaps are mostly zero
    return BloscCodec(cname="zstd", clevel=7, shuffle="shuffle" if typesize > 1 else "noshuffle", typesize=typesize)


def create_cache(path: Path, layout: CacheLayout, attrs: dict) -> None:
    """Create an empty cache with all metadata, atomically (temp dir, then rename)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.creating-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
    n, t, k, r = layout.n_rows, layout.seq_len, layout.k, layout.block_rows
    id_dtype = token_dtype(layout.vocab_size)
    group.create_array("tokens", shape=(n, t), chunks=(r, t), dtype=id_dtype,
                       compressors=ZstdCodec(level=3), fill_value=0)
    group.create_array("topk_ids", shape=(n, t, k), chunks=(r, t, k), dtype=id_dtype,
                       compressors=_blosc(np.dtype(id_dtype).itemsize), fill_value=0)
    prob_dtype = prob_storage_dtype(layout.prob_dtype)
    group.create_array("topk_probs", shape=(n, t, k), chunks=(r, t, k), dtype=prob_dtype,
                       compressors=_blosc(np.dtype(prob_dtype).itemsize), fill_value=0)
    if layout.with_weights:
        group.create_array("sample_weights", shape=(n, t, k), chunks=(r, t, k), dtype=np.float16,
                           compressors=_blosc(2), fill_value=0)
    group.create_array("done", shape=(layout.n_blocks,), chunks=(1,), dtype=np.uint8, fill_value=0)
    group.create_array("checksum", shape=(layout.n_blocks,), chunks=(1,), dtype=np.uint32, fill_value=0)
    full = dict(attrs)
    full.update(
        schema_version=SCHEMA_VERSION, n_rows=n, seq_len=t, k=k, vocab_size=layout.vocab_size,
        block_rows=r, n_blocks=layout.n_blocks, prob_dtype=layout.prob_dtype,
        with_weights=layout.with_weights,
    )
    full["encodings"] = decode_recipe(full)
    group.attrs.update({ATTRS_KEY: full})
    os.replace(tmp, path)


def block_checksum(arrays: list[np.ndarray]) -> int:
    value = 0
    for array in arrays:
        value = crc32c.crc32c(np.ascontiguousarray(array).tobytes(), value)
    return value


def _layout_from_attrs(attrs: dict) -> CacheLayout:
    return CacheLayout(
        n_rows=attrs["n_rows"], seq_len=attrs["seq_len"], k=attrs["k"], vocab_size=attrs["vocab_size"],
        block_rows=attrs["block_rows"], prob_dtype=attrs["prob_dtype"], with_weights=attrs.get("with_weights", False),
    )


class CacheStore:
    """Low-level access to a cache group: block writes (dump) and raw block reads (reader, verify)."""

    def __init__(self, path: Path, mode: str = "r"):
        self.path = Path(path)
        if not self.path.exists():
            raise LogitcacheError(f"no cache at {self.path}")
        if not (self.path / "zarr.json").is_file():
            raise LogitcacheError(f"{self.path} is not a Zarr v3 store (no zarr.json)")
        try:
            self.group = zarr.open_group(store=str(self.path), mode=mode)
            attrs = self.group.attrs.asdict()
        except Exception as exc:
            raise LogitcacheError(f"cannot open cache {self.path}: metadata unreadable ({exc})") from None
        if ATTRS_KEY not in attrs or attrs[ATTRS_KEY].get("kind") != "cache":
            raise LogitcacheError(f"{self.path} is a Zarr store but not a logitcache cache")
        self.attrs: dict = dict(attrs[ATTRS_KEY])
        if self.attrs.get("schema_version") != SCHEMA_VERSION:
            raise LogitcacheError(
                f"{self.path} has cache schema {self.attrs.get('schema_version')}, this logitcache reads {SCHEMA_VERSION}"
            )
        self.layout = _layout_from_attrs(self.attrs)
        names = ["tokens", "topk_ids", "topk_probs", "done", "checksum"] + (
            ["sample_weights"] if self.layout.with_weights else []
        )
        try:
            self.arrays = {name: self.group[name] for name in names}
        except Exception as exc:
            raise LogitcacheError(f"cache {self.path} is missing an array ({exc})") from None

    def done_mask(self) -> np.ndarray:
        """(B,) bool; a missing or unreadable marker counts as not done."""
        try:
            return self.arrays["done"][:] == 1
        except Exception:
            mask = np.zeros(self.layout.n_blocks, dtype=bool)
            for b in range(self.layout.n_blocks):
                try:
                    mask[b] = self.arrays["done"][b] == 1
                except Exception:
                    pass
            return mask

    def write_block(self, block: int, tokens: np.ndarray, topk_ids: np.ndarray, topk_probs: np.ndarray,
                    weights: np.ndarray | None = None) -> None:
        """Encode and write one block, then its checksum, then its `done` marker (in that order)."""
        start, stop = self.layout.block_range(block)
        assert tokens.shape[0] == stop - start
        id_deltas, order = encode_ids(topk_ids, self.layout.vocab_size)
        stored_probs = encode_probs(np.take_along_axis(topk_probs, order, axis=-1), self.layout.prob_dtype)
        stored = [tokens.astype(token_dtype(self.layout.vocab_size)), id_deltas, stored_probs]
        self.arrays["tokens"][start:stop] = stored[0]
        fault_pause("LOGITCACHE_FAULT_WRITE_PAUSE")  # fault-injection tests: widen the mid-block window
        self.arrays["topk_ids"][start:stop] = stored[1]
        self.arrays["topk_probs"][start:stop] = stored[2]
        if self.layout.with_weights:
            stored.append(np.take_along_axis(weights, order, axis=-1).astype(np.float16))
            self.arrays["sample_weights"][start:stop] = stored[3]
        self.arrays["checksum"][block] = np.uint32(block_checksum(stored))
        self.arrays["done"][block] = 1

    def read_stored_block(self, block: int) -> list[np.ndarray]:
        """The block's stored (encoded) arrays; raises CacheCorruptError if a chunk cannot be decoded."""
        start, stop = self.layout.block_range(block)
        names = ["tokens", "topk_ids", "topk_probs"] + (["sample_weights"] if self.layout.with_weights else [])
        try:
            return [self.arrays[name][start:stop] for name in names]
        except Exception as exc:
            raise CacheCorruptError(f"block {block}: stored data cannot be decoded ({exc})", block) from None

    def check_block(self, block: int, stored: list[np.ndarray]) -> None:
        try:
            expected = int(self.arrays["checksum"][block])
        except Exception as exc:
            raise CacheCorruptError(f"block {block}: checksum unreadable ({exc})", block) from None
        if block_checksum(stored) != expected:
            raise CacheCorruptError(f"block {block}: checksum mismatch (stored data changed after writing)", block)

    def decode(self, stored: list[np.ndarray], by_prob: bool = True) -> tuple[np.ndarray, ...]:
        """Stored block -> tokens (n, T) int64, ids (n, T, K) int64, probs (n, T, K) float32 [, weights],
        each position sorted by decreasing probability (or left in ascending id order when not
        `by_prob`: the losses are sums over K, and the sort is a third of the decode time)."""
        tokens = stored[0].astype(np.int64)
        ids = decode_ids(stored[1])
        probs = normalise_topk(decode_probs(stored[2], self.layout.prob_dtype))
        if not by_prob:
            out = [tokens, ids, probs] + ([stored[3].astype(np.float32)] if self.layout.with_weights else [])
            return tuple(out)
        order = np.argsort(-probs, axis=-1, kind="stable")
        out = [tokens, np.take_along_axis(ids, order, axis=-1), np.take_along_axis(probs, order, axis=-1)]
        if self.layout.with_weights:
            out.append(np.take_along_axis(stored[3].astype(np.float32), order, axis=-1))
        return tuple(out)

    def bytes_on_disk(self) -> dict[str, int]:
        sizes = {}
        for name in self.arrays:
            folder = self.path / name
            sizes[name] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0
        return sizes


class CacheReader:
    """The public reader (DESIGN.md section 9). `read(start, stop)` -> tokens, ids, probs."""

    def __init__(self, path: Path, require_complete: bool = True, verify: bool = True):
        self.store = CacheStore(path)
        self.attrs = self.store.attrs
        self.layout = self.store.layout
        self.verify = verify
        if require_complete:
            done = self.store.done_mask()
            if not done.all():
                missing = int((~done).sum())
                raise LogitcacheError(
                    f"cache {path} is incomplete: {missing} of {len(done)} blocks not done "
                    f"(first: block {int(np.argmin(done))}); finish it with `logitcache dump --resume`"
                )

    def __len__(self) -> int:
        return self.layout.n_rows

    def read_block(self, block: int, targets: bool = True, by_prob: bool = True) -> tuple[np.ndarray, ...]:
        """One block decoded; checksum-verified first when `verify`. Only tokens when not `targets`;
        each position's entries by decreasing probability when `by_prob`, else by ascending id."""
        if not targets:
            start, stop = self.layout.block_range(block)
            try:
                return (self.store.arrays["tokens"][start:stop].astype(np.int64),)
            except Exception as exc:
                raise CacheCorruptError(f"block {block}: tokens cannot be decoded ({exc})", block) from None
        stored = self.store.read_stored_block(block)
        if self.verify:
            self.store.check_block(block, stored)
        return self.store.decode(stored, by_prob)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stop = min(stop, len(self))
        if not 0 <= start <= stop:
            raise LogitcacheError(f"bad row range {start}:{stop} for a cache of {len(self)} rows")
        r = self.layout.block_rows
        parts = []
        for block in range(start // r, (stop - 1) // r + 1 if stop > start else start // r):
            b_start, _ = self.layout.block_range(block)
            decoded = self.read_block(block)[:3]
            lo, hi = max(start - b_start, 0), min(stop - b_start, decoded[0].shape[0])
            parts.append([a[lo:hi] for a in decoded])
        if not parts:
            t, k = self.layout.seq_len, self.layout.k
            return np.zeros((0, t), np.int64), np.zeros((0, t, k), np.int64), np.zeros((0, t, k), np.float32)
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def open_cache(path: str | Path, verify: bool = True) -> CacheReader:
    """Open a complete cache for reading; refuses an incomplete or foreign store with a clear error."""
    return CacheReader(Path(path), require_complete=True, verify=verify)


def verify_cache(path: Path, progress=None) -> list[str]:
    """Full integrity check. Returns one message per faulty block (empty list: the cache is sound)."""
    store = CacheStore(path)
    layout = store.layout
    problems: list[str] = []
    done = store.done_mask()
    if progress:
        progress.start("verify", layout.n_blocks)
    for block in range(layout.n_blocks):
        if progress:
            progress.update(1)
        if not done[block]:
            problems.append(f"block {block}: not done")
            continue
        try:
            stored = store.read_stored_block(block)
            store.check_block(block, stored)
            _, ids, probs = store.decode(stored)[:3]
        except CacheCorruptError as exc:
            problems.append(str(exc))
            continue
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= layout.vocab_size:
            problems.append(f"block {block}: id outside the vocabulary")
        elif not np.isfinite(probs).all() or (probs < 0).any():
            problems.append(f"block {block}: non-finite or negative probability")
        elif (probs.sum(-1) > 1 + 1e-3).any():
            problems.append(f"block {block}: a position's probabilities sum above 1")
        elif (np.diff(probs, axis=-1) > 0).any():
            problems.append(f"block {block}: probabilities not sorted after decode")
    if progress:
        progress.finish()
    return problems


def cache_summary(path: Path) -> dict:
    """What `inspect` shows: attributes, blocks done, bytes per token on disk and raw."""
    store = CacheStore(path)
    layout, attrs = store.layout, store.attrs
    sizes = store.bytes_on_disk()
    tokens = max(1, layout.n_rows * layout.seq_len)
    target_names = ["topk_ids", "topk_probs"] + (["sample_weights"] if layout.with_weights else [])
    target_bytes = sum(sizes[n] for n in target_names)
    raw_per_token = layout.k * (
        np.dtype(token_dtype(layout.vocab_size)).itemsize + np.dtype(prob_storage_dtype(layout.prob_dtype)).itemsize
        + (2 if layout.with_weights else 0)
    )
    return {
        "path": str(path),
        "attrs": attrs,
        "blocks_done": int(store.done_mask().sum()),
        "n_blocks": layout.n_blocks,
        "bytes_on_disk": sum(sizes.values()),
        "bytes_per_token": target_bytes / tokens,
        "raw_bytes_per_token": float(raw_per_token),
        "compression_ratio": raw_per_token / max(target_bytes / tokens, 1e-9),
        "full_logit_bytes_per_token": 4.0 * layout.vocab_size,
        "sizes": sizes,
    }


def same_attrs(a: dict, b: dict, ignore: tuple[str, ...] = ("package_version", "created", "config")) -> list[str]:
    """Keys whose values differ between two attribute dicts (for --resume checks)."""
    keys = set(a) | set(b)
    return sorted(k for k in keys if k not in ignore and json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True))


def block_chunk_path(path: Path, array: str, block: int) -> Path:
    """The storage file of one block of one array (Zarr v3 default chunk keys: c/<block>/0/...)."""
    ndim = {"tokens": 2, "done": 1, "checksum": 1}.get(array, 3)
    return Path(path, array, "c", str(block), *(["0"] * (ndim - 1)))
