"""`copy SRC DST`: a cache between local disk and object storage, either way, block by block.

The destination gets the source's metadata objects verbatim (through create_cache's claim and commit,
so a half-copied store is never taken for a finished one), then every block the source has done:
its stored arrays fetched, checked against the source's checksum, and committed in the destination
like a dump commits (data, checksum, `done`). Blocks the destination already has are skipped, so an
interrupted copy resumes; a destination holding a different cache (other attributes, down to the
creation time) is refused and left as it is. An incomplete source is refused before anything is
written unless `allow_incomplete` (then its done blocks are copied and the copy is as incomplete).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import CacheCorruptError, LogitcacheError
from .cache import CREATING, CacheStore, block_checksum, metadata_keys, root_attrs, write_metadata
from .fetch import read_ahead
from .backends import as_location
from .location import check_key

log = logging.getLogger(__name__)


@dataclass
class CopyReport:
    src: str = ""
    dst: str = ""
    n_blocks: int = 0
    blocks_copied: int = 0
    blocks_skipped: int = 0  # already done in the destination
    blocks_missing: int = 0  # not done in the source (with allow_incomplete: the copy lacks them too)
    bytes_stored: int = 0  # decompressed stored bytes moved
    problems: list[str] = field(default_factory=list)


DATA_FILES = ("tokenizer.json", "prepare_config.json", "prepare_report.json")  # beside tokens.zarr/
TOKEN_STORE = "tokens.zarr"


def data_dir_keys(source) -> list[str]:
    """The objects of a data dir a copy writes: its files and the token store's, sorted. A listed name that
    could point outside the destination (absolute, '..', a backslash) refuses the whole copy before
    anything is written; other names (a user's notes beside the data) are left out, with a warning."""
    listed = sorted(source.sizes())
    for key in listed:
        check_key(source, key)
    keys = [key for key in listed if key in DATA_FILES or key.startswith(TOKEN_STORE + "/")]
    if len(keys) < len(listed):
        other = sorted(set(listed) - set(keys))
        log.warning("copy: %s: %d object(s) not part of a data dir left out (%s)", source, len(other),
                    ", ".join(other[:3]))
    return keys


def is_data_dir(where) -> bool:
    """A prepared data dir (tokenizer.json and tokens.zarr), local or remote."""
    location = as_location(where)
    return location.read_bytes("tokenizer.json") is not None and location.child("tokens.zarr").read_bytes("zarr.json") is not None


def check_partial_copy(source, target, keys: list[str]) -> None:
    """A destination without a token store root resumes only as a partial copy of this source: every object
    there is one of the source's data dir files with the same bytes (each was read back when written). Any
    other object (another data dir's tokenizer.json, a user's file) refuses the copy before anything is written."""
    wanted = set(keys)
    foreign = [key for key in sorted(target.sizes())
               if key not in wanted or target.read_bytes(key) != source.read_bytes(key)]
    if foreign:
        raise LogitcacheError(f"{target} holds {len(foreign)} file(s) that are not a partial copy of {source} "
                              f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); not overwritten")


def copy_data_dir(src, dst, progress=None, workers: int = 8) -> CopyReport:
    """A prepared data dir, verified first (every chunk's crc32c, the tokenizer's sha256, the fingerprint:
    with a problem nothing is written and the report lists it), then its own files (`data_dir_keys`) one by
    one (bytes compared after writing), the token store's root `zarr.json` last: until it lands the
    destination is no token store.
    A destination holding another data dir (another token store root: its fingerprint and attributes) is
    refused; a partial copy (no root yet: `check_partial_copy`) is completed."""
    source, target = as_location(src), as_location(dst)
    if source == target:
        raise LogitcacheError(f"copy: source and destination are the same place ({source})")
    target.check_reachable()
    target.check_no_links()
    root_key = "tokens.zarr/zarr.json"
    theirs = target.read_bytes(root_key)
    if theirs is not None and theirs != source.read_bytes(root_key):
        raise LogitcacheError(f"{target} holds a different prepared data dir; not overwritten")
    every_key = data_dir_keys(source)
    if theirs is None:
        check_partial_copy(source, target, every_key)
    from .verify import verify_data

    keys = [k for k in every_key if k != root_key]
    report = CopyReport(src=str(source), dst=str(target), n_blocks=len(keys) + 1)
    report.problems = verify_data(source, progress=progress)["problems"]
    if report.problems:  # a corrupt source copies nothing: its problems are the report (`copy` exits 1, as verify)
        return report

    def copy_file(key: str) -> int:
        data = source.read_bytes(key)
        target.write_bytes(key, data)
        if target.read_bytes(key) != data:
            raise CacheCorruptError(f"{key}: the copy reads back different bytes")
        return len(data)

    if progress:
        progress.start("copy", report.n_blocks)
    for _, result in read_ahead(copy_file, keys, ahead=2 * workers, workers=workers):
        if isinstance(result, Exception):
            raise result
        report.bytes_stored += result
        if progress:
            progress.update(1)
    report.bytes_stored += copy_file(root_key)  # last: the destination becomes a token store
    report.blocks_copied = report.n_blocks
    if progress:
        progress.update(1)
        progress.finish()
    return report


def check_source_complete(source: CacheStore, allow_incomplete: bool) -> None:
    """An unfinished source (a dump still running, or stopped) copies only with `allow_incomplete`: a
    copy that looks like a finished transfer but is not would surface later, far from its cause, as
    train-student's "incomplete" refusal. Checked before the destination is touched."""
    done = source.done_mask()
    if done.all() or allow_incomplete:
        return
    raise LogitcacheError(f"copy: {source.path} is incomplete: {int((~done).sum())} of {len(done)} blocks not done "
                          f"(first: block {int(np.argmin(done))}); finish it with `logitcache dump --resume`, or pass "
                          "--allow-incomplete to copy the done blocks")


def copy_cache(src, dst, progress=None, workers: int = 8, allow_incomplete: bool = False) -> CopyReport:
    source = CacheStore(src)
    target_location = as_location(dst)
    if target_location == source.location:
        raise LogitcacheError(f"copy: source and destination are the same place ({source.path})")
    check_source_complete(source, allow_incomplete)
    target_location.check_reachable()
    target_location.check_no_links()
    found = root_attrs(target_location)
    same = found is not None and {**found, "kind": "cache"} == source.attrs
    if found is not None and not same:
        raise LogitcacheError(f"{target_location} holds a different cache (or another store); not overwritten. "
                              "Choose another destination or delete it first")
    if found is None and target_location.exists():
        raise LogitcacheError(f"{target_location} exists and is not a cache; not overwritten")
    if found is None or found.get("kind") == CREATING:
        objects = {key: source.location.read_bytes(key) for key in metadata_keys(source.layout)}
        write_metadata(target_location, objects, finish=found is not None)
    target = CacheStore(target_location, mode="r+")

    layout = source.layout
    report = CopyReport(src=source.path, dst=target.path, n_blocks=layout.n_blocks)
    src_done, dst_done = source.done_mask(), target.done_mask()
    report.blocks_missing = int((~src_done).sum())
    report.blocks_skipped = int((src_done & dst_done).sum())
    todo = np.flatnonzero(src_done & ~dst_done).tolist()

    def copy_block(block: int) -> int:
        stored = source.read_checked_block(block)  # raises CacheCorruptError on a checksum mismatch
        target.write_stored_block(block, stored, block_checksum(stored))
        return sum(a.nbytes for a in stored)

    if progress:
        progress.start("copy", len(todo))
    for block, result in read_ahead(copy_block, todo, ahead=2 * workers, workers=workers):
        if progress:
            progress.update(1)
        if isinstance(result, CacheCorruptError):
            report.problems.append(str(result))
        elif isinstance(result, Exception):
            raise result
        else:
            report.blocks_copied += 1
            report.bytes_stored += result
    if progress:
        progress.finish()
    log.info("copied %d blocks %s -> %s (%d already there)", report.blocks_copied, report.src, report.dst,
             report.blocks_skipped)
    return report
