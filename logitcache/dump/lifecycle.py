"""A dump's output, the same for every engine: the attributes that define a cache, the claim (rank 0 or
the Ray driver alone creates, replaces or refuses the store) and the resume checks every writer makes."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import torch

from .. import __version__
from .._settings import to_dict
from ..config import DumpConfig, dump_output_settings
from ..errors import LogitcacheError, ResumeMismatchError
from ..store import CacheLayout, CacheStore, create_cache, same_attrs
from ..store.cache import CREATING, delete_cache, root_attrs
from ..store.backends import as_location
from ..store.location import Location
from ..runtime import device as D

log = logging.getLogger(__name__)


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
    summary: dict = field(default_factory=dict)  # rank 0: cache_summary of the whole cache after every rank finished
    coverage: list = field(default_factory=list)  # per teacher: positions aligned, mass mapped (this run's blocks, all ranks)


def cache_attrs(config: DumpConfig, data, teacher_infos: list[dict], n_rows: int, device: torch.device) -> dict:
    """The attributes that define a cache; a resume must find these (resume_differences says which count).
    `device` and `precision`: what `auto` resolved to on the device the blocks are computed on."""
    attrs = {
        "kind": "cache", "package_version": __version__, "targets": config.targets,
        "teachers": teacher_infos, "combine": config.combine, "temperature": config.temperature,
        "samples": config.samples if config.targets == "sample" else None,
        "proposal_temperature": config.proposal_temperature if config.targets == "sample" else None,
        "seed": config.seed if config.targets == "sample" else None,
        "data_fingerprint": data.fingerprint, "tokenizer_sha256": data.attrs["tokenizer_sha256"],
        "tokenizer_identity": data.tokenizer_identity,
        "split": config.split, "rows": {"selection": config.row_selection if config.max_chunks else "all",
                                        "count": n_rows, "of": data.store.num_rows(config.split)},
        "device": device.type, "precision": D.resolve_precision(device, config.precision), "config": to_dict(config),
    }
    if config.targets == "mass":  # only then: the other caches' attributes are as they always were
        attrs.update(mass=config.mass, max_k=config.max_k)
    return attrs


# attributes create_cache adds from the layout (compared as a CacheLayout instead)
LAYOUT_ATTRS = ("n_rows", "seq_len", "k", "vocab_size", "block_rows", "n_blocks", "prob_dtype", "with_weights",
                "with_teacher_count", "ragged", "encodings", "schema_version")


# compared as what they resolved to (attributes of the same names) where the cache records them: `auto` is
# cuda/bf16 on one machine and cpu/fp32 on another, and `--device cpu` after `--device auto` on a CPU machine
# is the same device
RESOLVED_SETTINGS = ("device", "precision")


def _difference(key: str, old, new) -> str:
    old_text, new_text = json.dumps(old, sort_keys=True), json.dumps(new, sort_keys=True)
    return f"{key}: {old_text} in the cache, {new_text} here" if len(old_text) + len(new_text) <= 80 else f"{key} differs"


def resume_differences(found: dict, attrs: dict) -> list[str]:
    """What differs between the attributes of a cache (`found`) and those this dump writes (`attrs`): every
    defining attribute (the teachers with their paths, weights and architecture settings), and every
    recorded setting that can change the bytes (DumpConfig's affects_output: writer_threads, the data's and
    the cache's paths may change), each as "key: old in the cache, new here"."""
    settings = {"old": dump_output_settings(found.get("config") or {}),
                "new": dump_output_settings(json.loads(json.dumps(attrs["config"])))}
    for name in RESOLVED_SETTINGS:
        if name in found:
            settings["old"].pop(name, None)
            settings["new"].pop(name, None)
    differs = [_difference(key, settings["old"][key], settings["new"][key]) for key in settings["new"]
               if settings["old"].get(key) != settings["new"][key]]
    named = set(settings["new"])  # a setting that is also an attribute (temperature, combine, ...) is named once
    for key in same_attrs(found, attrs, ignore=("package_version", "created", "config")):
        if key not in named:
            differs.append(_difference(key, found.get(key), attrs.get(key)))
    return differs


def check_resumable(store: CacheStore, layout: CacheLayout, attrs: dict) -> None:
    """Refuse a store made with another config or layout (every rank checks, not only rank 0)."""
    out = store.path
    differs = resume_differences(store.attrs, attrs | {k: store.attrs.get(k) for k in LAYOUT_ATTRS})
    if differs:
        raise ResumeMismatchError(f"cannot resume {out}: it was made with a different config ({'; '.join(differs)})",
                                  differs)
    if store.layout != layout:
        raise ResumeMismatchError(f"cannot resume {out}: its layout differs from this config")


def prepare_store(config: DumpConfig, layout: CacheLayout, attrs: dict, resume: bool, overwrite: bool) -> None:
    """Rank 0 alone: replace (--overwrite), refuse (an existing store without --resume) or create the
    store, locally or in object storage (store.create_cache: claim, metadata, commit). A store to
    resume is checked afterwards by every rank (open_or_create); one whose creation was interrupted
    is finished here if its claim records this config."""
    out = as_location(config.out)
    out.check_reachable()
    if overwrite and not resume:
        delete_cache(out)  # refuses links in what it would delete
    out.check_no_links()  # a resumed store's blocks would be written through one
    found = root_attrs(out)
    if found is not None and found.get("kind") == CREATING:
        if not resume:
            raise LogitcacheError(f"{out} is a half-created cache (its creation was interrupted); pass --resume to "
                                  "finish it, or --overwrite to replace it")
        differs = resume_differences(found, attrs | {k: found.get(k) for k in LAYOUT_ATTRS + ("kind",)})
        if differs:
            raise ResumeMismatchError(f"cannot resume {out}: it was made with a different config "
                                      f"({'; '.join(differs)})", differs)
        create_cache(out, layout, attrs, finish=True)
        return
    if found is not None or out.exists():
        if not resume:
            raise LogitcacheError(f"{out} already exists; pass --resume to continue it, --overwrite to replace it, "
                                  "or choose another --out")
        return  # checked by every rank in open_or_create (CacheStore refuses a folder that is not a cache)
    if resume:
        log.info("%s does not exist yet: --resume starts it", out)
    if not out.is_remote:
        out.local_path.parent.mkdir(parents=True, exist_ok=True)
    create_cache(out, layout, attrs)


def open_or_create(config: DumpConfig, layout: CacheLayout, attrs: dict, resume: bool, overwrite: bool,
                   env: D.DistEnv) -> CacheStore:
    """Rank 0 prepares the output while the others wait; then every rank opens it and checks it
    against its own config. Rank 0's error reaches every rank, so none waits forever."""
    error = None
    if env.is_main:
        try:
            prepare_store(config, layout, attrs, resume, overwrite)
        except LogitcacheError as exc:
            error = str(exc)
    if D.coordinated():
        error = D.broadcast_from_main(error)
    elif not env.is_main:
        wait_for_store(as_location(config.out), env)
    if error is not None:
        raise LogitcacheError(error if env.is_main else f"rank {env.rank}: rank 0 failed: {error}")
    store = CacheStore(config.out, mode="r+")
    check_resumable(store, layout, attrs)
    return store


def wait_for_store(out: Location, env: D.DistEnv, timeout_s: float = 600.0) -> None:
    """Independent ranks (no torchrun: a job array setting RANK and WORLD_SIZE): wait for rank 0's
    commit (the root's kind becomes "cache"). --overwrite is refused there, so an old store is never
    mistaken for the new one."""
    deadline = time.monotonic() + timeout_s
    while (root_attrs(out) or {}).get("kind") != "cache":
        if time.monotonic() > deadline:
            raise LogitcacheError(f"rank {env.rank}: {out} was not created by rank 0 within {timeout_s:.0f} s")
        time.sleep(0.2)


