"""`verify` (a cache: every block's marker, checksum and raw decoded values; a data dir: every token
store chunk against its checksum, and the data fingerprint) and `inspect`'s summary."""
from __future__ import annotations

import hashlib

import numpy as np

from ..errors import CacheCorruptError
from .cache import CacheStore
from .fetch import read_ahead
from .ids import token_dtype
from .backends import as_location
from .tokens import TokenStore


def check_decoded(block: int, ids: np.ndarray, probs: np.ndarray, vocab_size: int, sum_bound: float,
                  kept: np.ndarray | None = None) -> str | None:
    """A problem with a block's raw decoded values (ids (n, T, K), probs (n, T, K) before any
    normalisation), or None. `sum_bound` is the code's largest honest raw sum (codecs: sum_bound). `kept`
    (n, T, K): the slots that hold an id (mass targets; the padding after them is id 0, p 0)."""
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= vocab_size:
        return f"block {block}: id outside the vocabulary"
    descending = np.diff(ids, axis=-1) < 0  # (n, T, K - 1)
    if kept is not None:
        descending &= kept[..., 1:]
    if descending.any():
        return f"block {block}: ids not ascending after decode"
    if not np.isfinite(probs).all() or (probs < 0).any():
        return f"block {block}: non-finite or negative probability"
    worst = float(probs.sum(-1).max(initial=0.0))
    if worst > sum_bound:
        return f"block {block}: a position's decoded probabilities sum to {worst:.4f}, above {sum_bound:.4f} (the code's bound)"
    return None


def check_ragged(block: int, stored: list[np.ndarray], k: int) -> str | None:
    """A problem with a mass-target block's counts and flat rows (stored: tokens, counts (n, T), ids (1, C),
    codes (1, C)), or None: each count at most K, their sum within the row, the row's rest the fill value 0."""
    counts, id_row, code_row = stored[1], stored[2][0], stored[3][0]
    total = int(counts.sum(dtype=np.int64))
    if int(counts.max(initial=0)) > k:
        return f"block {block}: a mass count above max_k {k}"
    if total > id_row.size:
        return f"block {block}: mass counts sum to {total}, beyond the block's {id_row.size} entries"
    if id_row[total:].any() or code_row[total:].any():
        return f"block {block}: entries past the block's {total} kept ids are not the fill value 0"
    return None


def check_teacher_count(block: int, count: np.ndarray, probs: np.ndarray, n_teachers: int) -> str | None:
    """A problem with a block's teacher_count (n, T) against its decoded probs (n, T, K), or None: no count
    above the number of teachers, and no probability where no teacher is aligned (the student trains
    those positions with CE only, so a target there would be read as one)."""
    if int(count.max(initial=0)) > n_teachers:
        return f"block {block}: a teacher_count of {int(count.max())}, above the cache's {n_teachers} teachers"
    if (probs[count == 0] != 0).any():
        return f"block {block}: probability stored at a position no teacher aligned (teacher_count 0)"
    return None


def check_weights(block: int, weights: np.ndarray) -> str | None:
    """A problem with a sampled block's decoded importance weights (n, T, K), or None: each finite and >= 0
    (a weight p/q above float16's range is stored as inf)."""
    if not np.isfinite(weights).all():
        return f"block {block}: non-finite sample weight (a weight count/N * p/q above float16's 65504 is stored as inf)"
    if (weights < 0).any():
        return f"block {block}: negative sample weight"
    return None


def verify_cache(path, progress=None, ahead: int = 8) -> list[str]:
    """Full integrity check (blocks fetched `ahead` at a time). Returns one message per faulty block
    (empty list: the cache is sound)."""
    store = CacheStore(path)
    layout = store.layout
    sum_bound = store.code.sum_bound(layout.k)
    n_teachers = len(store.attrs.get("teachers") or [])
    done = store.done_mask()
    problems = {b: f"block {b}: not done" for b in range(layout.n_blocks) if not done[b]}  # block -> message
    if progress:
        progress.start("verify", layout.n_blocks)
        progress.update(len(problems))
    for block, stored in read_ahead(store.read_checked_block, np.flatnonzero(done).tolist(), ahead=ahead):
        if progress:
            progress.update(1)
        if isinstance(stored, CacheCorruptError):
            problems[block] = str(stored)
        elif isinstance(stored, Exception):
            raise stored
        elif layout.ragged and (problem := check_ragged(block, stored, layout.k)):
            problems[block] = problem
        else:
            raw = store.decode_raw(stored)
            kept = np.arange(layout.k) < raw.mass_count[..., None].astype(np.int64) if layout.ragged else None
            problem = check_decoded(block, raw.ids, raw.probs, layout.vocab_size, sum_bound, kept) or \
                (check_weights(block, raw.weights) if raw.weights is not None else None) or \
                (check_teacher_count(block, raw.teacher_count, raw.probs, n_teachers)
                 if raw.teacher_count is not None else None)
            if problem:
                problems[block] = problem
    if progress:
        progress.finish()
    return [problems[b] for b in sorted(problems)]


def is_data_location(where) -> bool:
    """A prepared data dir (it holds tokens.zarr) or a bare token store, local or remote."""
    location = as_location(where)
    if location.child("tokens.zarr").read_bytes("zarr.json") is not None:
        return True
    from .cache import root_attrs

    return (root_attrs(location) or {}).get("kind") == "tokens"


def verify_data(path, progress=None, ahead: int = 8) -> dict:
    """Full check of a prepared data dir (or a bare tokens.zarr): every chunk of every split decoded and
    checked against its crc32c (fetched `ahead` at a time), tokenizer.json against the recorded sha256,
    and the data fingerprint (prepare's sha256 over the tokenizer's sha256 and every split) recomputed.
    Returns {"splits": {split: n_chunks}, "problems": [one line each], "warnings": [...]}."""
    location = as_location(path)
    in_dir = location.child("tokens.zarr").read_bytes("zarr.json") is not None
    store = TokenStore(location.child("tokens.zarr") if in_dir else location)
    problems: list[str] = []
    warnings = [f"split '{name}' has no chunk checksums: only the data fingerprint checks it; re-run "
                "`logitcache prepare` to add them" for name in store.unchecked_splits()]
    tokenizer_sha = store.attrs.get("tokenizer_sha256", "")
    if in_dir:
        tokenizer = location.read_bytes("tokenizer.json")
        if tokenizer is None:
            problems.append("tokenizer.json is missing")
        elif hashlib.sha256(tokenizer).hexdigest() != tokenizer_sha:
            problems.append("tokenizer.json does not match the tokenizer recorded in tokens.zarr (tokenizer_sha256)")
    if progress:
        progress.start("verify", sum(store.n_chunks(name) for name in store.names))
    digest = hashlib.sha256(tokenizer_sha.encode())  # the fingerprint: split by split in name order
    bad_chunks = 0
    for name in store.names:
        digest.update(name.encode())
        for chunk, result in read_ahead(lambda c: store.read_chunk(name, c), range(store.n_chunks(name)), ahead=ahead):
            if progress:
                progress.update(1)
            rows, problem = (None, f"{store.chunk_label(name, chunk)}: cannot be read ({result})") \
                if isinstance(result, Exception) else result
            if problem:
                problems.append(problem)
                bad_chunks += 1
            if rows is not None:
                digest.update(np.ascontiguousarray(rows).tobytes())
    for name in store.names:  # the text record (prepare's text/ group), in the fingerprint's order
        if store.has_text(name):
            for label, array in store.text_arrays(name):
                problem = _text_problem(label, array)
                if problem:
                    problems.append(problem)
                    bad_chunks += 1
                digest.update(label.encode())
                digest.update(np.ascontiguousarray(array[:]).tobytes())
    if not bad_chunks and digest.hexdigest() != store.attrs.get("fingerprint"):  # chunks unchecked or re-summed
        problems.append("the data fingerprint does not match the stored tokens (they changed after prepare)")
    if progress:
        progress.finish()
    return {"splits": {name: store.n_chunks(name) for name in store.names}, "problems": problems,
            "warnings": warnings}


def _text_problem(label: str, array) -> str | None:
    """A chunk of a text-record array whose crc32c differs from the one prepare stored, or None."""
    import crc32c

    from .tokens import ATTRS_KEY as TOKENS_KEY, CHECKSUMS_KEY

    checks = array.attrs.get(TOKENS_KEY, {}).get(CHECKSUMS_KEY) or []
    values, step = array[:], array.chunks[0]
    for chunk, start in enumerate(range(0, values.shape[0], step)):
        if chunk >= len(checks) or crc32c.crc32c(np.ascontiguousarray(values[start:start + step]).tobytes()) != int(checks[chunk]):
            return f"{label} chunk {chunk}: checksum mismatch (the stored text changed after prepare)"
    return None


def cache_summary(path) -> dict:
    """What `inspect` shows: attributes, blocks done, bytes per token on disk and raw."""
    store = CacheStore(path)
    layout, attrs = store.layout, store.attrs
    sizes = store.bytes_on_disk()
    tokens = max(1, layout.n_rows * layout.seq_len)
    target_bytes = sum(sizes[n] for n in layout.block_arrays if n != "tokens")
    bytes_per_id = (np.dtype(token_dtype(layout.vocab_size)).itemsize + store.code.storage_dtype.itemsize
                    + (2 if layout.with_weights else 0))
    per_position = [store.arrays[name].dtype.itemsize for name in ("teacher_count", "mass_count") if name in store.arrays]
    extra = {}
    if layout.ragged:  # the ids actually kept: raw bytes of those and of the counts
        mean_ids = mean_mass_count(store)
        extra["mean_ids_per_position"] = mean_ids
    ids_per_position = extra.get("mean_ids_per_position", layout.k)
    raw_per_token = ids_per_position * bytes_per_id + sum(per_position)  # every target array, as target_bytes
    return extra | {
        "path": store.path,
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


def mean_mass_count(store: CacheStore) -> float:
    """Mass targets: the mean number of ids kept per position over the done blocks (0.0 when none is done)."""
    done = store.done_mask()
    total = positions = 0
    for block in np.flatnonzero(done).tolist():
        start, stop = store.layout.block_range(block)
        counts = store.arrays["mass_count"][start:stop]
        total += int(counts.sum(dtype=np.int64))
        positions += counts.size
    return total / max(positions, 1)
