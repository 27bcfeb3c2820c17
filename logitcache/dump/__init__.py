"""`dump`: run the teachers once over every chunk and write the compressed top-k (or sampled) cache.

Work is split in blocks of `block_rows` rows; rank r of W handles blocks b with b % W == r, so ranks
(and nodes on a shared filesystem) never write the same file. Under torchrun the ranks meet twice
through the process group: rank 0 alone prepares the output (--overwrite, create, --resume checks)
while the others wait, and at the end, so the report describes the finished cache. Each block is
computed in fixed batches, so its bytes never depend on what else ran: a resumed or multi-rank dump
is identical to a single uninterrupted one. Writer threads encode, compress and write blocks while
the teachers compute the next ones; a block counts only once its `done` marker is written.
"""
from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import __version__
from .._settings import check, to_dict
from ..config import DumpConfig, dump_output_settings  # noqa: F401  (DumpConfig re-exported)
from ..data.prepared import load_data, spread_indices
from ..errors import LogitcacheError, ResumeMismatchError
from ..progress import NULL_PROGRESS, ProgressHook
from ..store import CacheLayout, CacheStore, cache_summary, create_cache, same_attrs
from ..store.cache import CREATING, root_attrs
from ..store.location import Location
from ..store.writers import device_kind, record_writer, BlockWriter
from ..teachers.ensemble import Ensemble, load_teachers
from ..teachers.targets import block_targets
from ..training import distributed as D

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


def select_rows(split_rows: np.ndarray, config: DumpConfig) -> np.ndarray:
    """The chunks a dump caches: all, the first N, or N spread evenly over the split."""
    if not config.max_chunks:
        return split_rows
    if config.row_selection == "first":
        return split_rows[: config.max_chunks]
    return split_rows[spread_indices(split_rows.shape[0], config.max_chunks)]


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
    out = Location(config.out)
    out.check_reachable()
    if overwrite and not resume:
        out.delete_all()
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
        wait_for_store(Location(config.out), env)
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


@dataclass
class Teaching:
    """What computing a dump's blocks takes, the same for every engine: the selected rows (N, T), the
    ensemble on its device (None when only the attributes are wanted), the layout and the attributes."""
    rows: np.ndarray
    ensemble: Ensemble | None
    layout: CacheLayout
    attrs: dict


def load_teaching(config: DumpConfig, device: torch.device, with_ensemble: bool = True) -> Teaching:
    """Load the data and the teachers (checked against the data) and describe the cache they make on
    `device` (cache_attrs: the device type and precision, so a writer of another is refused by the resume
    check). Every engine's writers call this, so their blocks and attributes are the same. Without the
    ensemble (a Ray driver) the teachers are described from their architectures on the meta device."""
    data = load_data(config.data)
    rows = select_rows(data.store.split(config.split), config)
    check(rows.shape[0] > 0, f"split '{config.split}' has no chunks")
    models, infos = load_teachers(list(config.teachers), device, data, own_tokenizers=True, weights=with_ensemble)
    check(config.width <= data.vocab_size, f"{'max_k' if config.targets == 'mass' else 'top_k'} {config.width} is "
                                           f"larger than the vocabulary ({data.vocab_size})")
    cross = None  # teachers with tokenizers of their own, or --teacher-weight: teachers/cross.py
    if config.teacher_weights or any(info.get("tokenizer") == "own" for info in infos):
        from ..teachers.cross import CrossTeaching

        cross = CrossTeaching(config, data, rows, models, infos)  # refuses low coverage before anything is written
    ensemble = None
    if with_ensemble and cross is not None:
        ensemble = cross.ensemble(config, models, device, data.vocab_size)
    elif with_ensemble:
        ensemble = Ensemble(models, config.combine, config.temperature, device,
                            D.autocast_for(device, config.precision), vocab_size=data.vocab_size,
                            logit_budget=config.logit_budget_mb << 20)
    counted = cross is not None and bool(cross.coverage)
    layout = CacheLayout(rows.shape[0], data.seq_len, config.width, data.vocab_size, config.block_rows,
                         config.prob_dtype, with_weights=config.targets == "sample", with_teacher_count=counted,
                         ragged=config.targets == "mass")
    attrs = cache_attrs(config, data, infos, rows.shape[0], device)
    if counted:
        attrs["coverage"] = cross.coverage
    attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return Teaching(rows, ensemble, layout, attrs)


def dump(config: DumpConfig, resume: bool = False, overwrite: bool = False,
         progress: ProgressHook = NULL_PROGRESS) -> DumpReport:
    """Write (or, with `resume`, finish) the cache of `config`. Under torchrun the ranks meet twice: after
    rank 0 has prepared the output, and at the end, so the report describes the whole cache."""
    env = D.dist_env()
    if config.engine == "ray":  # the driver of Ray workers (ray_engine.py); it computes no block itself
        from .ray_engine import dump_ray

        check(env.world == 1, "--engine ray runs one driver; start it without torchrun")
        return dump_ray(config, resume=resume, overwrite=overwrite, progress=progress)
    device = D.pick_device(config.device, env)
    if env.world > 1 and not D.launched_by_torchrun():
        check(not overwrite, "--overwrite with several ranks needs torchrun (ranks must wait for rank 0); "
                             "delete the old cache first")
    elif env.world > 1:
        D.init(env, device)
    teaching = load_teaching(config, device)
    rows, ensemble, layout, attrs = teaching.rows, teaching.ensemble, teaching.layout, teaching.attrs
    store = open_or_create(config, layout, attrs, resume, overwrite, env)
    record_writer(store, device_kind(device, attrs["precision"]))

    done = store.done_mask()
    mine = [b for b in range(layout.n_blocks) if b % env.world == env.rank]
    todo = [b for b in mine if not done[b]]
    report = DumpReport(path=str(config.out), n_rows=rows.shape[0], blocks_skipped=len(mine) - len(todo),
                        rank=env.rank, world=env.world)
    progress.start("dump", sum(stop - start for start, stop in map(layout.block_range, todo)))
    writer = BlockWriter(store, threads=config.writer_threads)
    t_start = time.perf_counter()
    try:
        for block in todo:
            start, stop = layout.block_range(block)
            block_tokens = rows[start:stop]
            t0 = time.perf_counter()
            copy = block_targets(ensemble, config, block, block_tokens, device, progress.update)
            report.teacher_seconds += time.perf_counter() - t0
            writer.put(block, block_tokens, copy)
            report.tokens += block_tokens.size
    finally:
        writer.close()
        progress.finish()
    report.blocks_written = writer.written
    report.seconds = time.perf_counter() - t_start
    if getattr(ensemble, "cross", False):  # every rank's counts summed, as the blocks and tokens below
        from ..teachers.mixed import coverage_of

        stats = D.all_reduce_sum(torch.from_numpy(ensemble.stats.copy()).to(device))  # (teachers, 3)
        report.coverage = coverage_of(stats.cpu().numpy())
    log.info("rank %d: wrote %d blocks (%d already done) at %.0f tokens/s", env.rank, report.blocks_written,
             report.blocks_skipped, report.tokens / max(report.seconds, 1e-9))
    # every rank is done before anyone describes the cache; counts and tokens are summed over ranks
    totals = D.all_reduce_sum(torch.tensor([report.blocks_written, report.blocks_skipped, report.tokens],
                                           dtype=torch.float64, device=device))
    seconds = D.all_reduce_max(torch.tensor([report.seconds], dtype=torch.float64, device=device))
    report.blocks_written, report.blocks_skipped, report.tokens = (int(x) for x in totals.tolist())
    report.seconds = float(seconds.item())
    report.tokens_per_s = report.tokens / max(report.seconds, 1e-9)
    if env.is_main:
        report.summary = cache_summary(config.out)
    return report
