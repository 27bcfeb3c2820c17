"""`cache.zarr`: layout, creation, block writes and raw block reads.

One Zarr v3 group, rows = chunks, T = positions, K = kept ids (docs/architecture.md, "The cache"):
  tokens      (N, T)    uint16/uint32      the input chunks
  topk_ids    (N, T, K) uint16/uint32      ids sorted ascending per position, stored as gaps (ids.py)
  topk_probs  (N, T, K) float | uint8      probabilities in the same id order, one code (codecs/)
  sample_weights (N, T, K) float16         sampled targets only: importance weights
  Mass targets (`ragged`: a per-position number of ids, at most K = max_k) store instead of topk_ids/topk_probs:
  mass_count  (N, T)    uint8/uint16/uint32 ids kept at each position (0..K)
  mass_ids    (B, C)    uint16/uint32      block b's kept ids, flat: position after position (row-major over
                                           (rows, T)), each position's ids ascending as gaps; C = block_rows * T * K
  mass_probs  (B, C)    float | uint8      their probabilities in the same order, one code
                                           Past a block's sum(mass_count) the flat rows hold the fill value 0.
  teacher_count (N, T)  uint8              only when a teacher has a tokenizer of its own: the teachers
                                           aligned at each position (0: no target; the student trains it
                                           with CE only). A cache without it: every teacher everywhere.
  done        (B,)      uint8              1 once block b's data and checksum are written
  checksum    (B,)      uint32             crc32c over block b's stored (encoded) arrays
Each array is chunked by whole blocks of `block_rows` rows, so every block is one storage chunk per
array and ranks writing different blocks never touch the same file. `done` and `checksum` have one
element per storage chunk for the same reason.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from ..errors import CacheCorruptError, LogitcacheError
from ..faults import fault_pause
from ..targets import Targets
from .chunks import ChunkEncoder, concurrently
from .codecs import prob_code
from .ids import decode_ids, encode_ids, token_dtype
from .backends import as_location
from .location import Location, buffer_of
from .tokens import ATTRS_KEY  # the one key both stores keep their attributes under

SCHEMA_VERSION = 1
TARGET_ARRAYS = ("tokens", "topk_ids", "topk_probs")
MASS_ARRAYS = ("tokens", "mass_count", "mass_ids", "mass_probs")  # ragged (mass) targets
CREATING = "cache-creating"  # the root's kind while creation is under way (the claim); "cache" once committed


@dataclass(frozen=True)
class CacheLayout:
    n_rows: int
    seq_len: int
    k: int
    vocab_size: int
    block_rows: int
    prob_dtype: str
    with_weights: bool = False  # sampled targets: importance weights (float16) in `sample_weights`
    with_teacher_count: bool = False  # a teacher with a tokenizer of its own: `teacher_count` (N, T) uint8
    ragged: bool = False  # mass targets: per-position counts and flat ids/codes (MASS_ARRAYS), K = the most ids kept

    @property
    def n_blocks(self) -> int:
        return (self.n_rows + self.block_rows - 1) // self.block_rows

    def block_range(self, block: int) -> tuple[int, int]:
        start = block * self.block_rows
        return start, min(start + self.block_rows, self.n_rows)

    @property
    def capacity(self) -> int:
        """C: entries of one block's flat mass_ids / mass_probs row (every position at its most, K ids)."""
        return self.block_rows * self.seq_len * self.k

    @property
    def block_arrays(self) -> tuple[str, ...]:
        """The arrays a block's checksum covers, in checksum order."""
        return ((MASS_ARRAYS if self.ragged else TARGET_ARRAYS) + (("sample_weights",) if self.with_weights else ())
                + (("teacher_count",) if self.with_teacher_count else ()))

    @classmethod
    def from_attrs(cls, attrs: dict) -> "CacheLayout":
        return cls(n_rows=attrs["n_rows"], seq_len=attrs["seq_len"], k=attrs["k"], vocab_size=attrs["vocab_size"],
                   block_rows=attrs["block_rows"], prob_dtype=attrs["prob_dtype"],
                   with_weights=attrs.get("with_weights", False),
                   with_teacher_count=attrs.get("with_teacher_count", False), ragged=attrs.get("ragged", False))


def count_dtype(k: int):
    """mass_count's dtype: the smallest unsigned integer that holds 0..k."""
    return np.uint8 if k <= 255 else np.uint16 if k <= 65535 else np.uint32


def decode_recipe(prob_dtype: str, ragged: bool = False) -> dict:
    """How to decode the stored arrays without this package (saved in the attributes)."""
    if ragged:
        return mass_recipe(prob_dtype)
    return {
        "topk_ids": "ids = cumsum(topk_ids, axis=-1)  # ids ascending per position",
        "topk_probs": prob_code(prob_dtype).recipe() + "  # same order as ids",
        "normalise": "s = sum(p, axis=-1); where s > 1 (quantisation rounding), p /= s  # what open_cache returns",
        "tail": "p_tail = 1 - sum(p, axis=-1)  # after normalise: >= 0",
        "order": "open_cache sorts each position by decreasing p (stable); the stored order is by id",
    }


def mass_recipe(prob_dtype: str) -> dict:
    """The decode recipe of a mass-target (ragged) cache."""
    return {
        "mass_count": "c = mass_count[rows of block b]  # (n, T) ids kept per position",
        "mass_ids": "g = mass_ids[b][:sum(c)]; split g after each position's c entries (row-major over (n, T)); "
                    "ids = cumsum of each piece  # ids ascending per position",
        "mass_probs": prob_code(prob_dtype).recipe().replace("topk_probs", "mass_probs[b][:sum(c)]")
                      + "  # split as the ids, same order",
        "pad": "open_cache returns (n, T, K) arrays: slot j < c holds the j-th id and p, slots j >= c id 0 and p 0",
        "normalise": "s = sum(p, axis=-1); where s > 1 (quantisation rounding), p /= s  # what open_cache returns",
        "tail": "p_tail = 1 - sum(p, axis=-1)  # after normalise: >= 0",
        "order": "open_cache sorts each position by decreasing p (stable); the stored order is by id",
    }


def encode_ragged(ids: np.ndarray, probs: np.ndarray, counts: np.ndarray, vocab_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mass targets (n, T, K) ids and probs whose first counts[n, t] slots are kept (n, T) -> the kept ids as
    flat ascending gaps and their probabilities in the same order (each (sum(counts),)), position after
    position. The slots past a position's count sort last (keyed by the id `vocab_size`), so the kept ones
    stay a prefix of every sorted position."""
    k = ids.shape[-1]
    kept = np.arange(k) < counts[..., None].astype(np.int64)  # (n, T, K) a prefix of each position
    keyed = np.where(kept, ids, vocab_size)  # (n, T, K)
    gaps, order = encode_ids(keyed, vocab_size + 1)  # sorted ascending: the kept slots first
    flat_probs = np.take_along_axis(probs, order, axis=-1)[kept]  # (M,)
    return gaps[kept].astype(token_dtype(vocab_size)), flat_probs


def decode_ragged(counts: np.ndarray, flat_gaps: np.ndarray, flat_probs: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """counts (n, T), a block's flat gaps and decoded probabilities (at least sum(counts) each) -> ids (n, T, K)
    int64 ascending per position and probs (n, T, K) float32; the slots past a position's count hold id 0
    and p 0 (the losses count p = 0 slots in the tail, so the padding changes no loss)."""
    kept = np.arange(k) < counts[..., None].astype(np.int64)  # (n, T, K)
    total = int(counts.sum(dtype=np.int64))
    ids = np.zeros(kept.shape, dtype=np.int64)
    ids[kept] = flat_gaps[:total]
    ids = np.cumsum(ids, axis=-1)
    ids[~kept] = 0
    probs = np.zeros(kept.shape, dtype=np.float32)
    probs[kept] = flat_probs[:total]
    return ids, probs


def normalise_topk(probs: np.ndarray) -> np.ndarray:
    """Quantisation can push a position's sum above 1; scale such positions back to exactly 1 (in place)."""
    probs = probs.astype(np.float32, copy=False)
    total = probs.sum(axis=-1)  # (...,)
    over = total > 1.0
    if over.any():
        probs[over] /= total[over][:, None]
    return probs


@dataclass(frozen=True)
class Compression:
    """How the target arrays are compressed: (method, level) for the ids (also the sampled weights) and for
    the probabilities. Readers take it from the Zarr metadata, so it never has to match across caches.

    Methods: "zstd" (plain zstd at that level), "blosc" (blosc's default small blocks, byte-shuffled, zstd
    inside; level = blosc's clevel) and "blosc-chunk" (the same with one blosc block per chunk, so the
    shuffle and zstd see the whole block). Blosc runs zstd at level 2 * clevel - 1 (clevel < 9).

    The default: ids byte-shuffled over the whole chunk then zstd (the gaps' high bytes are mostly zero and
    zstd drops them); probabilities of one byte (nothing to shuffle) plain zstd at a deeper match search
    (the codes repeat, more at higher T); wider probabilities (float16, float32, the 16-bit log codes) take
    `wide_probs`: byte-shuffled like the ids, so zstd sees their nearly constant high bytes as one run.
    Blosc's default blocks cut a block into pieces too small for zstd's matches. docs/benchmarks.md holds
    the measurements behind each level (benchmarks/bench_dump.py --writer)."""
    ids: tuple[str, int] = ("blosc-chunk", 4)
    probs: tuple[str, int] = ("zstd", 8)
    wide_probs: tuple[str, int] = ("blosc-chunk", 4)

    def probs_for(self, dtype: np.dtype) -> tuple[str, int]:
        """The method for probabilities stored as `dtype`."""
        return self.probs if np.dtype(dtype).itemsize == 1 else self.wide_probs

    def label(self) -> str:
        return f"ids {self.ids[0]}-{self.ids[1]}, probs {self.probs[0]}-{self.probs[1]}" + (
            f" (wider: {self.wide_probs[0]}-{self.wide_probs[1]})" if self.wide_probs != Compression.wide_probs else "")


BLOSC_MAX_BYTES = 2**31 - 1 - 16  # c-blosc's BLOSC_MAX_BUFFERSIZE (INT_MAX minus its 16-byte header)
BASELINE_COMPRESSION = Compression(("blosc", 7), ("blosc", 7))  # the store's first setting (the benchmarks' baseline)


def _compressor(method: tuple[str, int], dtype: np.dtype, chunk_shape: tuple[int, ...]):
    name, level = method
    if name == "zstd":
        return ZstdCodec(level=level)
    if name not in ("blosc", "blosc-chunk"):
        raise ValueError(f"unknown compression method {name!r} (zstd, blosc, blosc-chunk)")
    typesize = np.dtype(dtype).itemsize
    chunk_bytes = typesize * int(np.prod(chunk_shape))
    if chunk_bytes > BLOSC_MAX_BYTES:  # blosc refuses buffers of 2 GiB and more: the same zstd level, plain
        return ZstdCodec(level=2 * level - 1 if level < 9 else 22)
    blocksize = chunk_bytes if name == "blosc-chunk" else 0  # 0: blosc's own choice
    return BloscCodec(cname="zstd", clevel=level, shuffle="shuffle" if typesize > 1 else "noshuffle",
                      typesize=typesize, blocksize=blocksize)


def _metadata_objects(layout: CacheLayout, attrs: dict, compression: Compression) -> dict[str, bytes]:
    """Every metadata object of an empty cache ({"zarr.json": ..., "tokens/zarr.json": ...}), built in memory."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    memory = MemoryStore()
    group = zarr.open_group(store=memory, mode="w", zarr_format=3)
    n, t, k, r = layout.n_rows, layout.seq_len, layout.k, layout.block_rows
    id_dtype = token_dtype(layout.vocab_size)
    group.create_array("tokens", shape=(n, t), chunks=(r, t), dtype=id_dtype,
                       compressors=ZstdCodec(level=3), fill_value=0)
    chunk = (r, t, k)
    prob_dtype = prob_code(layout.prob_dtype).storage_dtype
    if layout.ragged:
        _mass_arrays(group, layout, compression)
    else:
        group.create_array("topk_ids", shape=(n, t, k), chunks=chunk, dtype=id_dtype,
                           compressors=_compressor(compression.ids, id_dtype, chunk), fill_value=0)
        group.create_array("topk_probs", shape=(n, t, k), chunks=chunk, dtype=prob_dtype,
                           compressors=_compressor(compression.probs_for(prob_dtype), prob_dtype, chunk), fill_value=0)
    if layout.with_weights:
        group.create_array("sample_weights", shape=(n, t, k), chunks=chunk, dtype=np.float16,
                           compressors=_compressor(compression.ids, np.float16, chunk), fill_value=0)
    if layout.with_teacher_count:
        group.create_array("teacher_count", shape=(n, t), chunks=(r, t), dtype=np.uint8,
                           compressors=ZstdCodec(level=3), fill_value=0)
    group.create_array("done", shape=(layout.n_blocks,), chunks=(1,), dtype=np.uint8, fill_value=0)
    group.create_array("checksum", shape=(layout.n_blocks,), chunks=(1,), dtype=np.uint32, fill_value=0)
    full = dict(attrs)
    full.update(
        schema_version=SCHEMA_VERSION, n_rows=n, seq_len=t, k=k, vocab_size=layout.vocab_size,
        block_rows=r, n_blocks=layout.n_blocks, prob_dtype=layout.prob_dtype,
        with_weights=layout.with_weights, encodings=decode_recipe(layout.prob_dtype, layout.ragged),
    )
    if layout.with_teacher_count:  # only then: a same-tokenizer cache's metadata is as it always was
        full["with_teacher_count"] = True
    if layout.ragged:  # only then, as with_teacher_count
        full["ragged"] = True
    group.attrs.update({ATTRS_KEY: full})

    async def collect() -> dict[str, bytes]:
        keys = [key async for key in memory.list()]
        return {key: (await memory.get(key, prototype=default_buffer_prototype())).to_bytes() for key in keys}

    return sync(collect())


def _mass_arrays(group, layout: CacheLayout, compression: Compression) -> None:
    """The arrays of mass targets: counts (N, T) chunked by block, flat ids and codes (B, C), one row a block."""
    n, t, r, c = layout.n_rows, layout.seq_len, layout.block_rows, layout.capacity
    counts = count_dtype(layout.k)
    group.create_array("mass_count", shape=(n, t), chunks=(r, t), dtype=counts,
                       compressors=_compressor(compression.ids, counts, (r, t)), fill_value=0)
    id_dtype = token_dtype(layout.vocab_size)
    group.create_array("mass_ids", shape=(layout.n_blocks, c), chunks=(1, c), dtype=id_dtype,
                       compressors=_compressor(compression.ids, id_dtype, (1, c)), fill_value=0)
    prob_dtype = prob_code(layout.prob_dtype).storage_dtype
    group.create_array("mass_probs", shape=(layout.n_blocks, c), chunks=(1, c), dtype=prob_dtype,
                       compressors=_compressor(compression.probs_for(prob_dtype), prob_dtype, (1, c)), fill_value=0)


def _with_kind(root_json: bytes, kind: str) -> bytes:
    document = json.loads(root_json)
    document["attributes"][ATTRS_KEY]["kind"] = kind
    return json.dumps(document, indent=2).encode()


def root_attrs(where) -> dict | None:
    """The logitcache attributes of the store's root `zarr.json`, or None when there is none (or unreadable)."""
    raw = as_location(where).read_bytes("zarr.json")
    try:
        return dict(json.loads(raw)["attributes"][ATTRS_KEY]) if raw is not None else None
    except (ValueError, KeyError, TypeError):
        return None


# the top-level names a cache's objects live under: the root and every array of any layout
CACHE_NAMES = frozenset(("zarr.json", "done", "checksum", "sample_weights", "teacher_count") + TARGET_ARRAYS
                        + MASS_ARRAYS)


def _is_partial(name: str, of: str) -> bool:
    """zarr's LocalStore writes `<of>.<hex>.partial` beside a file and moves it in."""
    stem = of.rsplit(".", 1)[0]
    return name.startswith(stem + ".") and name.endswith(".partial")


def belongs_to_cache(key: str) -> bool:
    """A key a cache (or its creation claim) writes, or a folder it makes on disk: the root `zarr.json`,
    one of its arrays' `zarr.json` or chunk `c/<i>[/<j>...]` (digits), or the temp file of one of these."""
    top, *rest = key.split("/")
    if not rest:
        return top == "zarr.json" or _is_partial(top, "zarr.json") or (top in CACHE_NAMES and top != "zarr.json")
    if top not in CACHE_NAMES or top == "zarr.json":
        return False
    if len(rest) == 1 and (rest[0] in ("zarr.json", "c") or _is_partial(rest[0], "zarr.json")):
        return True
    *folders, last = rest[1:] if rest[0] == "c" else ["x"]
    return (rest[0] == "c" and all(p.isdigit() for p in folders)
            and (last.isdigit() or (last.split(".", 1)[0].isdigit() and _is_partial(last, last.split(".", 1)[0]))))


def _every_key(location: Location) -> list[str]:
    """Every object under a location; on disk every file and folder, temp files (`.partial`) included."""
    if location.is_remote:
        return list(location.sizes())
    root = location.local_path
    return [p.relative_to(root).as_posix() for p in root.rglob("*")] if root.is_dir() else []


def delete_cache(where) -> None:
    """`--overwrite` / `run --force dump`: delete the cache at `where`, or a half-made claim of one (a
    root of kind "cache-creating", or a cache's arrays without their root), and nothing else. Any other
    thing there (a file, a folder or objects a cache does not write, another kind of store) is refused
    in one line naming it, before anything is deleted."""
    location = as_location(where)
    location.check_reachable()
    if not location.is_remote and location.local_path.is_symlink():  # rmtree refuses it, after the root is gone
        raise LogitcacheError(f"{location} is a symbolic link; not replaced (name the folder it points to)")
    if not location.is_remote and location.local_path.is_file():
        raise LogitcacheError(f"{location} is a file, not a cache; not replaced (choose another --out)")
    keys = sorted(_every_key(location))
    if not keys:
        if location.exists():
            location.delete_all()  # an empty folder
        return
    kind = (root_attrs(location) or {}).get("kind")
    if "zarr.json" in keys and kind not in ("cache", CREATING):
        what = f"a store of kind {kind!r}" if kind else "a Zarr store that is not a logitcache cache"
        raise LogitcacheError(f"{location} holds {what}; not replaced (choose another --out)")
    foreign = [key for key in keys if not belongs_to_cache(key)
               or (not location.is_remote and (location.local_path / key).is_symlink())]  # a cache writes no link
    if foreign:
        held = "a cache and " if kind else ""
        raise LogitcacheError(f"{location} holds {held}{len(foreign)} file(s) a cache does not write "
                              f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); not replaced "
                              "(choose another --out, or remove them yourself)")
    location.delete_all()


def metadata_keys(layout: CacheLayout) -> list[str]:
    """The metadata objects of a cache, the root last."""
    return [f"{name}/zarr.json" for name in layout.block_arrays + ("done", "checksum")] + ["zarr.json"]


def write_metadata(location: Location, objects: dict[str, bytes], finish: bool = False) -> None:
    """Steps 1-3 of create_cache for given metadata objects (the root under "zarr.json")."""
    objects = dict(objects)
    root = objects.pop("zarr.json")
    if not finish and not location.create_exclusive("zarr.json", _with_kind(root, CREATING)):
        raise LogitcacheError(f"{location} already exists (another writer created it first)")
    for key, data in objects.items():
        location.write_bytes(key, data)
    location.write_bytes("zarr.json", root)


def create_cache(where, layout: CacheLayout, attrs: dict, compression: Compression = Compression(),
                 finish: bool = False) -> None:
    """Create an empty cache with all metadata, with the same protocol on disk and in object storage
    (docs/architecture.md, "Caches in object storage"), since object stores have no folder rename:
      1. claim: the root `zarr.json`, kind "cache-creating", written only if absent (If-None-Match on S3,
         a hard link locally), so a second creator is refused and a half-created store is never a cache;
      2. the arrays' metadata;
      3. commit: the root rewritten with kind "cache" (one atomic PUT / rename).
    `finish` completes a store whose creation was interrupted after step 1 (its claim is already there).
    `compression` only changes how the target arrays are compressed: readers take it from the Zarr metadata."""
    write_metadata(as_location(where), _metadata_objects(layout, attrs, compression), finish)


def block_checksum(arrays: list[np.ndarray]) -> int:
    value = 0
    for array in arrays:
        value = crc32c.crc32c(np.ascontiguousarray(array).tobytes(), value)
    return value


class CacheStore:
    """Low-level access to a cache group: block writes (dump) and raw block reads (reader, verify)."""

    def __init__(self, where: "str | Path | Location", mode: str = "r"):
        self.location = as_location(where)
        self.path = str(self.location)  # for messages
        self.location.check_reachable()
        root = self.location.read_bytes("zarr.json")
        if root is None:
            if not self.location.exists():
                raise LogitcacheError(f"no cache at {self.path}")
            raise LogitcacheError(f"{self.path} is not a Zarr v3 store (no zarr.json)")
        try:
            self.group = zarr.open_group(store=self.location.zarr_store(read_only=mode == "r"), mode=mode)
            attrs = self.group.attrs.asdict()
        except Exception as exc:
            raise LogitcacheError(f"cannot open cache {self.path}: metadata unreadable ({exc})") from None
        if ATTRS_KEY in attrs and attrs[ATTRS_KEY].get("kind") == CREATING:
            raise LogitcacheError(f"{self.path} is a half-created cache (its creation was interrupted); "
                                  "rerun the dump with --resume, or --overwrite")
        if ATTRS_KEY not in attrs or attrs[ATTRS_KEY].get("kind") != "cache":
            raise LogitcacheError(f"{self.path} is a Zarr store but not a logitcache cache")
        self.attrs: dict = dict(attrs[ATTRS_KEY])
        if self.attrs.get("schema_version") != SCHEMA_VERSION:
            raise LogitcacheError(
                f"{self.path} has cache schema {self.attrs.get('schema_version')}, this logitcache reads {SCHEMA_VERSION}"
            )
        self.layout = CacheLayout.from_attrs(self.attrs)
        self.code = prob_code(self.layout.prob_dtype)
        try:
            self.arrays = {name: self.group[name] for name in self.layout.block_arrays + ("done", "checksum")}
            # a block's chunks encoded here and stored whole, as zarr would store them (store/chunks.py)
            self.encoders = {} if mode == "r" else {name: ChunkEncoder.of(self.arrays[name]) for name in self.layout.block_arrays}
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

    def write_block(self, block: int, data: Targets) -> None:
        """Encode and write block `block`'s arrays (mass targets: the first mass_count[i, t] slots of each position count), then its checksum, then its `done` marker (in that order)."""
        start, stop = self.layout.block_range(block)
        assert data.tokens.shape[0] == stop - start
        tokens = data.tokens.astype(token_dtype(self.layout.vocab_size))
        if self.layout.ragged:
            stored = [tokens, *self._ragged_arrays(data.ids, data.probs, data.mass_count)]
        else:
            id_gaps, order = encode_ids(data.ids, self.layout.vocab_size)
            stored = [tokens, id_gaps, self.code.encode(np.take_along_axis(data.probs, order, axis=-1))]
        if self.layout.with_weights:
            stored.append(np.take_along_axis(data.weights, order, axis=-1).astype(np.float16))
        if self.layout.with_teacher_count:
            stored.append(np.asarray(data.teacher_count, dtype=np.uint8))  # (n, T)
        self.write_stored_block(block, stored, block_checksum(stored))

    def _ragged_arrays(self, ids: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        """A block's stored mass arrays: counts (n, T) and the flat gaps and codes, each one (1, C) row whose
        entries past sum(counts) are 0 (the whole row is written: a chunk is never read back to be patched)."""
        layout = self.layout
        counts = np.asarray(counts)
        if counts.shape != ids.shape[:2] or counts.min(initial=0) < 0 or counts.max(initial=0) > layout.k:
            raise LogitcacheError(f"mass counts must be (n, T) in 0..{layout.k}")
        gaps, flat_probs = encode_ragged(ids, probs, counts, layout.vocab_size)
        id_row = np.zeros((1, layout.capacity), dtype=token_dtype(layout.vocab_size))
        id_row[0, :gaps.size] = gaps
        prob_row = np.zeros((1, layout.capacity), dtype=self.code.storage_dtype)
        prob_row[0, :gaps.size] = self.code.encode(flat_probs)
        return [counts.astype(count_dtype(layout.k)), id_row, prob_row]

    def write_stored_block(self, block: int, stored: list[np.ndarray], checksum: int) -> None:
        """Commit one block's stored (encoded) arrays: the data and the checksum (concurrently: one round
        trip to object storage), then, once they all returned (a PUT returns once durable), `done`. So
        `done` is never there without its data and checksum."""
        chunks, writes = {}, [("checksum", slice(block, block + 1), np.array([checksum], dtype=np.uint32))]
        for name, values in zip(self.layout.block_arrays, stored):
            encoder = self.encoders.get(name)
            if encoder is not None:
                chunks[encoder.key(block)] = buffer_of(encoder.encode(values))
            else:
                writes.append((name, self._block_selection(name, block), values))
        with self.location.errors():
            concurrently(self.group.store, chunks,
                         [(self.arrays[name], "setitem", (selection, value)) for name, selection, value in writes])
            fault_pause("LOGITCACHE_FAULT_WRITE_PAUSE")  # fault-injection tests: widen the mid-block window
            self.arrays["done"][block] = 1

    def _fetch(self, selections: list[tuple[str, slice | int]]) -> list[np.ndarray]:
        """Several array reads at once (one request each, concurrently: a remote block costs one round trip)."""
        with self.location.errors():
            return [np.asarray(a) for a in concurrently(self.group.store, {},
                                                        [(self.arrays[name], "getitem", (selection,))
                                                         for name, selection in selections])]

    def read_stored_block(self, block: int, with_checksum: bool = False) -> list[np.ndarray]:
        """The block's stored (encoded) arrays (and its stored checksum last, as a 0-d array, when
        `with_checksum`); raises CacheCorruptError if a chunk cannot be decoded."""
        selections = [(name, self._block_selection(name, block)) for name in self.layout.block_arrays]
        selections += [("checksum", slice(block, block + 1))] if with_checksum else []
        try:
            return self._fetch(selections)
        except LogitcacheError:
            raise
        except Exception as exc:
            raise CacheCorruptError(f"block {block}: stored data cannot be decoded ({exc})", block) from None

    def _block_selection(self, name: str, block: int) -> slice:
        """Block b's part of an array: its rows, or for the flat mass arrays their row b."""
        if name in ("mass_ids", "mass_probs"):
            return slice(block, block + 1)
        return slice(*self.layout.block_range(block))

    def read_checked_block(self, block: int) -> list[np.ndarray]:
        """The block's stored arrays, checksum-verified (data and checksum fetched together)."""
        *stored, checksum = self.read_stored_block(block, with_checksum=True)
        if block_checksum(stored) != int(checksum[0]):
            raise CacheCorruptError(f"block {block}: checksum mismatch (stored data changed after writing)", block)
        return stored

    def decode_raw(self, stored: list[np.ndarray]) -> Targets:
        """Stored block -> Targets: tokens (n, T) int64, ids (n, T, K) int64, probs (n, T, K) float32, and the
        weights (float32), mass_count and teacher_count where the cache has them, exactly as the recipe's
        decode lines say (ascending id order, no normalisation). Mass targets come padded to K (decode_ragged:
        id 0, p 0 past each position's count)."""
        named = dict(zip(self.layout.block_arrays, stored))
        tokens = named["tokens"].astype(np.int64)
        extra = {}
        if self.layout.with_teacher_count:
            extra["teacher_count"] = named["teacher_count"].astype(np.uint8)
        if self.layout.ragged:
            counts, gaps, codes = named["mass_count"], named["mass_ids"][0], named["mass_probs"][0]
            total = int(counts.sum(dtype=np.int64))
            if int(counts.max(initial=0)) > self.layout.k or total > gaps.size:
                raise CacheCorruptError(f"mass counts above {self.layout.k} or beyond the block's {gaps.size} entries")
            ids, probs = decode_ragged(counts, gaps, self.code.decode(codes[:total]), self.layout.k)
            return Targets(tokens, ids, probs, mass_count=counts, **extra)
        if self.layout.with_weights:
            extra["weights"] = named["sample_weights"].astype(np.float32)
        return Targets(tokens, decode_ids(named["topk_ids"]), self.code.decode(named["topk_probs"]), **extra)

    def decode(self, stored: list[np.ndarray], by_prob: bool = True) -> Targets:
        """`decode_raw`, then the recipe's normalise step; each position sorted by decreasing probability
        (or left in ascending id order when not `by_prob`: the losses are sums over K, and the sort
        is a third of the decode time)."""
        raw = self.decode_raw(stored)
        probs = normalise_topk(raw.probs)
        if not by_prob:
            return dataclasses.replace(raw, probs=probs)
        order = np.argsort(-probs, axis=-1, kind="stable")
        sort = {name: np.take_along_axis(getattr(raw, name), order, axis=-1) for name in ("ids", "weights")
                if getattr(raw, name) is not None}
        return dataclasses.replace(raw, probs=np.take_along_axis(probs, order, axis=-1), **sort)

    def bytes_on_disk(self) -> dict[str, int]:
        """{array: stored bytes} (metadata included), from one listing of the location."""
        sizes = dict.fromkeys(self.arrays, 0)
        for key, size in self.location.sizes().items():
            name = key.split("/", 1)[0]
            if name in sizes:
                sizes[name] += size
        return sizes


def same_attrs(a: dict, b: dict, ignore: tuple[str, ...] = ("package_version", "created", "config")) -> list[str]:
    """Keys whose values differ between two attribute dicts (for --resume checks)."""
    keys = set(a) | set(b)
    return sorted(k for k in keys if k not in ignore and json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True))


def block_chunk_key(array: str, block: int) -> str:
    """The storage key of one block of one array (Zarr v3 default chunk keys: <array>/c/<block>/0/...)."""
    ndim = {"tokens": 2, "teacher_count": 2, "mass_count": 2, "mass_ids": 2, "mass_probs": 2, "done": 1,
            "checksum": 1}.get(array, 3)
    return "/".join([array, "c", str(block)] + ["0"] * (ndim - 1))


def block_chunk_path(path: Path, array: str, block: int) -> Path:
    """The storage file of one block of one array in a local cache."""
    return Path(path, block_chunk_key(array, block))
