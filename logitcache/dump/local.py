"""The local engine: this process, or each rank of a torchrun job.

Rank r of W handles blocks b with b % W == r, so ranks (and nodes on a shared filesystem) never write the
same file. The ranks meet twice through the process group: rank 0 alone prepares the output while the
others wait (lifecycle.open_or_create), and at the end, so the report describes the finished cache.
Writer threads encode, compress and write blocks while the teachers compute the next ones; a block
counts only once its `done` marker is written.
"""
from __future__ import annotations

import logging
import time

import torch

from .._settings import check
from ..config import DumpConfig
from ..progress import NULL_PROGRESS, ProgressHook
from ..store import cache_summary
from ..store.writers import BlockWriter, device_kind, record_writer
from ..teachers.targets import block_targets
from ..runtime import device as D
from .lifecycle import DumpReport, open_or_create
from .teaching import load_teaching

log = logging.getLogger(__name__)


def dump_local(config: DumpConfig, resume: bool = False, overwrite: bool = False,
               progress: ProgressHook = NULL_PROGRESS) -> DumpReport:
    """Write (or, with `resume`, finish) the cache of `config` in this process or this torchrun rank."""
    env = D.dist_env()
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
    if ensemble.stats is not None:  # every rank's counts summed, as the blocks and tokens below
        from ..teachers.mixed import coverage_of

        stats = D.all_reduce_sum(torch.from_numpy(ensemble.stats.copy()).to(device))  # (teachers, len(STATS))
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
