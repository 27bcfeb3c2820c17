"""`dump`: run the teachers once over every chunk and write the compressed top-k (or sampled, or mass) cache.

Work is split in blocks of `block_rows` rows. Each block is computed in fixed batches, so its bytes never
depend on what else ran: a resumed, multi-rank or Ray dump is identical to a single uninterrupted one.

    lifecycle.py   the cache's attributes, the claim (create, replace or refuse the store), the resume checks
    teaching.py    the selected rows and the teachers' ensemble, loaded as every engine loads them
    local.py       the local engine: this process, or torchrun ranks
    ray_engine.py  --engine ray: elastic Ray workers, one task per block
"""
from __future__ import annotations

from .._settings import check
from ..config import DumpConfig
from ..progress import NULL_PROGRESS, ProgressHook
from ..runtime import device as D
from .lifecycle import (DumpReport, cache_attrs, check_resumable, open_or_create, prepare_store,
                        resume_differences)
from .teaching import Teaching, load_teaching, select_rows


def dump(config: DumpConfig, resume: bool = False, overwrite: bool = False,
         progress: ProgressHook = NULL_PROGRESS) -> DumpReport:
    """Write (or, with `resume`, finish) the cache of `config` with its engine. Under torchrun the ranks
    meet twice: after rank 0 has prepared the output, and at the end, so the report describes the whole
    cache."""
    if config.engine == "ray":  # the driver of Ray workers (ray_engine.py); it computes no block itself
        from .ray_engine import dump_ray

        check(D.dist_env().world == 1, "--engine ray runs one driver; start it without torchrun")
        return dump_ray(config, resume=resume, overwrite=overwrite, progress=progress)
    from .local import dump_local

    return dump_local(config, resume=resume, overwrite=overwrite, progress=progress)


__all__ = ["DumpConfig", "DumpReport", "Teaching", "cache_attrs", "check_resumable", "dump", "load_teaching",
           "open_or_create", "prepare_store", "resume_differences", "select_rows"]
