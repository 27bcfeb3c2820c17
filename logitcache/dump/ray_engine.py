"""`dump --engine ray`: elastic, preemptible dump workers on Ray Data, writing one cache.

The driver prepares the store exactly as the local engine does (lifecycle.open_or_create: claim, metadata,
commit, --overwrite and resume checks), then hands Ray Data one item per block that is not done. An
autoscaling pool of actors (--workers MIN[:MAX]) computes them: each actor loads the ensemble once
(teaching.load_teaching, as the local engine) and, per item, computes the block in the same fixed batches
(teachers/targets.block_targets) and commits it itself (store/writers.write_host_block: data, checksum,
then `done`), locally or in object storage. The driver never sees block bytes: a result is the block's number, the worker's pid
and its device. A task returns only once its block is committed, so a task Ray reports finished is a
block done; a worker killed mid-block loses the task, Ray restarts the actor and retries it (Ray Data's
actor pools default to max_restarts=-1 and max_task_retries=-1), and the retry writes the same bytes.
A driver killed mid-run leaves committed blocks committed: the same command with --resume skips them.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .._settings import check
from ..config import DumpConfig, worker_range
from .lifecycle import DumpReport
from ..errors import LogitcacheError
from ..faults import record_event
from ..progress import NULL_PROGRESS, ProgressHook
from ..store.location import StorageOptions

log = logging.getLogger(__name__)

RAY_MISSING = "--engine ray needs Ray: pip install 'logitcache[ray]'"
FORWARDED_PREFIXES = ("LOGITCACHE_", "AWS_")  # storage settings the workers need as the driver has them
WORKER_CLASS = "BlockWorker"
# an actor killed while it loads the teachers (a preempted node) is replaced this many times in a row
# before the job fails; a refusal (another precision, other teacher files) fails the first block instead
INIT_DEATHS = 8


def import_ray():
    """Ray, or the one-line refusal naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise LogitcacheError(RAY_MISSING) from None
    return ray


@dataclass
class RayDumpReport(DumpReport):
    """lifecycle.DumpReport (teacher_seconds: summed over workers) plus what the cluster did."""
    engine: str = "ray"
    worker_pids: list[int] = field(default_factory=list)  # every process that committed a block
    restarts: int = 0  # actor restarts Ray reports for this job's workers
    writers: list[dict] = field(default_factory=list)  # the cache's device kinds (store/writers.py)
    coverage_blocks: int = 0  # blocks whose coverage counts reached the driver (a task retried after its commit: not)


def predicted_precision(config: DumpConfig) -> str:
    """The precision the driver records for its workers (it computes no block itself): --precision as
    given; auto: bf16 for GPU workers, fp32 for CPU ones. A worker whose device resolves another one (a GPU
    without bf16 resolves fp16) is refused by the resume check: pass --precision explicitly then."""
    if config.precision != "auto":
        return config.precision
    return "bf16" if worker_uses_gpu(config) else "fp32"


def worker_uses_gpu(config: DumpConfig) -> bool:
    return config.device == "cuda" or (config.device == "auto" and config.ray.gpus_per_worker > 0)


def worker_device(config: DumpConfig):
    """A worker's device: the GPU Ray assigned it (it sees it as cuda:0), or the CPU."""
    import torch

    if worker_uses_gpu(config):
        check(torch.cuda.is_available(), "a --engine ray worker was asked for CUDA but sees no GPU "
                                         "(--gpus-per-worker 0 on a GPU job?)")
        return torch.device("cuda", 0)
    return torch.device("cpu")


class BlockWorker:
    """One Ray actor: loads the ensemble once, then computes and commits the blocks it is handed.

    Up to `1 + writer_threads` calls run at once in the actor; a lock lets one compute at a time, so one
    block is encoded and written while the next is computed (as the local engine's writer threads do),
    yet each call returns only after its own block is committed."""

    def __init__(self, config: DumpConfig, storage_options: StorageOptions, env: dict[str, str] | None = None):
        if env is not None:  # in a Ray worker (None: this process, as it is)
            apply_worker_env(env)  # before torch is imported here: OpenMP reads its spin setting when it loads
        record_event("init", -1)  # block -1: the actor's start, then "ready" once the teachers are loaded
        from .lifecycle import check_resumable
        from .teaching import load_teaching
        from ..store import CacheStore
        from ..store.backends import set_default_options
        from ..store.writers import device_kind, record_writer

        set_default_options(storage_options)  # the driver's: every location this worker opens takes them
        self.config = config
        self.refusal: str | None = None
        self.compute_lock = threading.Lock()
        try:
            import torch

            torch.set_num_threads(max(1, int(config.ray.cpus_per_worker)))
            self.device = worker_device(config)
            self.teaching = load_teaching(config, self.device)
            self.store = CacheStore(config.out, mode="r+")
            check_resumable(self.store, self.teaching.layout, self.teaching.attrs)
        except LogitcacheError as exc:  # raised by the first block: a refusal, not a death to retry
            self.refusal = str(exc)
            return
        self.kind = device_kind(self.device, self.teaching.attrs["precision"])
        self._record_writer = record_writer
        record_writer(self.store, self.kind)
        record_event("ready", -1)

    def __call__(self, batch: dict) -> dict:
        if self.refusal is not None:
            raise LogitcacheError(self.refusal)
        blocks = [int(b) for b in batch["block"]]
        seconds, counts = zip(*(self.commit(block) for block in blocks))
        return {"block": np.array(blocks, dtype=np.int64), "pid": np.full(len(blocks), os.getpid()),
                "kind": np.array([json.dumps(self.kind, sort_keys=True)] * len(blocks)), "seconds": np.array(seconds),
                "coverage_counts": np.stack(counts)}  # (blocks, teachers * 3 + 1)

    def coverage_counts(self) -> np.ndarray:
        """This actor's cross-tokenizer counts so far, flat, then 1 (one block counted); zeros but for the
        last entry where no teacher has a tokenizer of its own."""
        stats = self.teaching.ensemble.stats  # (teachers, len(mixed.STATS)), or None
        return np.append(np.zeros(0) if stats is None else stats.reshape(-1), 1.0)

    def commit(self, block: int) -> tuple[float, np.ndarray]:
        """Compute and commit one block: its teacher seconds and coverage counts (coverage_counts' layout;
        both 0 for a block another task committed, whose counts stay with that task)."""
        from ..teachers.targets import block_targets
        from ..store.writers import write_host_block

        record_event("start", block)
        if self.store.arrays["done"][block] == 1:  # a duplicate of a task that already committed
            record_event("skip", block)
            return 0.0, np.zeros_like(self.coverage_counts())
        self._record_writer(self.store, self.kind)  # one read; writes only a kind not yet listed
        start, stop = self.teaching.layout.block_range(block)
        tokens = self.teaching.rows[start:stop]  # (rows, T)
        with self.compute_lock:  # one block computes at a time: the counts' difference is this block's
            before = self.coverage_counts()
            t0 = time.perf_counter()
            copy = block_targets(self.teaching.ensemble, self.config, block, tokens, self.device)
            copy.wait()  # the device work belongs to this block's compute time, not to the next block's
            seconds = time.perf_counter() - t0
            counts = self.coverage_counts() - before
        counts[-1] = 1.0
        write_host_block(self.store, block, tokens, copy)
        record_event("commit", block)
        return seconds, counts


def worker_env() -> dict[str, str]:
    """The driver's settings the workers need as it has them: storage (LOGITCACHE_*, AWS_*)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}


def apply_worker_env(env: dict[str, str]) -> None:
    """In the actor, first thing: the driver's storage settings, and what process.tune_process gives every
    logitcache process (the heap thresholds, OpenMP's idle spin). Set here rather than as a Ray runtime_env,
    which would keep Ray from handing the pool one of the idle workers it starts with the cluster."""
    from ..runtime.process import tune_process

    os.environ.update(env)
    tune_process()


def connect(ray, config: DumpConfig) -> bool:
    """Join the cluster (--ray-address) or start a local one; True when this call started Ray."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=config.ray.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    except ConnectionError as exc:
        raise LogitcacheError(f"cannot reach the Ray cluster at {config.ray.address}: {exc} (a cluster with token "
                              "authentication needs its token: ~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
    return True


def quiet_ray_data() -> None:
    """No Ray Data progress bars or execution banners (the CLI draws its own bar); init deaths tolerated."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.max_consecutive_actor_init_deaths = INIT_DEATHS
    context.memory_usage_poll_interval_s = None  # the driver holds block numbers only: no memory to watch
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on the settings above


def job_workers(ray) -> tuple[int, int]:
    """(alive, restarts) of this job's block workers, from Ray's actor table (the GCS; no dashboard needed)."""
    from ray._private import state  # DeveloperAPI: the one view of actors that works without the dashboard

    try:
        job = ray.get_runtime_context().get_job_id()
        actors = state.actors(job_id=ray.JobID.from_hex(job)).values()
    except Exception:  # the table is advisory (the progress bar); the cache's state is in the store
        return 0, 0
    ours = [a for a in actors if WORKER_CLASS in a.get("ActorClassName", "")]
    alive = sum(a.get("State") == "ALIVE" for a in ours)
    return alive, sum(int(a.get("NumRestarts", 0)) for a in ours)


def logitcache_error_in(exc: BaseException) -> LogitcacheError | None:
    """The LogitcacheError a worker raised, from inside Ray's wrappers (RayTaskError, UserCodeException)."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, LogitcacheError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def innermost_line(exc: BaseException) -> str:
    """The last line of Ray's error text: the worker's own exception under Ray's traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else exc.__class__.__name__


def run_blocks(ray, config: DumpConfig, todo: list[int], report: RayDumpReport, progress: ProgressHook) -> set[str]:
    """Compute and commit `todo` on the actor pool; the writer kinds (JSON) that committed blocks."""
    import ray.data

    from ..store.backends import default_options

    low, high = worker_range(config.ray.workers)
    quiet_ray_data()
    items = ray.data.from_items([{"block": b} for b in todo], override_num_blocks=len(todo))  # one item per task
    calls = 1 + config.writer_threads  # one computing, the others committing
    # the pool grows while its actors' queues are over 175% of their concurrency: queue twice as many
    results = items.map_batches(
        BlockWorker, batch_size=1, fn_constructor_args=(config, default_options(), worker_env()),
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=2 * calls,
                                           max_concurrent_calls_per_actor=calls, enable_true_multi_threading=True),
        num_cpus=config.ray.cpus_per_worker, num_gpus=config.ray.gpus_per_worker)
    kinds, pids = set(), set()
    polled, alive = 0.0, 0
    counts = None  # coverage counts summed over the blocks this job computed (BlockWorker.coverage_counts)
    try:
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for block, pid, kind, seconds in zip(batch["block"], batch["pid"], batch["kind"], batch["seconds"]):
                log.info("block %d committed by pid %d (%s)", block, pid, kind)
                report.blocks_written += 1
                report.teacher_seconds += float(seconds)
                kinds.add(str(kind))
                pids.add(int(pid))
            summed = np.asarray(batch["coverage_counts"], dtype=np.float64).sum(axis=0)
            counts = summed if counts is None else counts + summed
            if time.monotonic() - polled > 1.0:
                polled = time.monotonic()
                alive, report.restarts = job_workers(ray)
            progress.update(len(batch["block"]), workers=alive)
    except Exception as exc:
        refusal = logitcache_error_in(exc)
        if refusal is not None:
            raise LogitcacheError(str(refusal)) from None
        raise LogitcacheError(f"the Ray job failed ({exc.__class__.__name__}: {innermost_line(exc)}); committed "
                              "blocks are kept: rerun with --resume") from None
    report.restarts = max(report.restarts, job_workers(ray)[1])
    report.worker_pids = sorted(pids)
    if counts is not None and counts.size > 1:  # teachers on tokenizers of their own: as the local engine reports
        from ..teachers.mixed import STATS, coverage_of

        report.coverage = coverage_of(counts[:-1].reshape(-1, len(STATS)))
        report.coverage_blocks = int(counts[-1])
    return kinds


def prepare_driver(config: DumpConfig, resume: bool, overwrite: bool):
    """The driver's part before any block: describe the teachers (no weights) and claim, create or check
    the store as the local engine does. (layout, store, blocks not done)."""
    import torch

    from ..runtime import device as D
    from .lifecycle import open_or_create
    from .teaching import load_teaching

    teaching = load_teaching(config, torch.device("cpu"), with_ensemble=False)  # the attributes; no block here
    # as the workers will resolve them (the driver may have no GPU): a worker that differs is refused
    teaching.attrs["device"] = "cuda" if worker_uses_gpu(config) else "cpu"
    teaching.attrs["precision"] = predicted_precision(config)
    store = open_or_create(config, teaching.layout, teaching.attrs, resume, overwrite, D.dist_env())
    done = store.done_mask()
    return teaching.layout, store, [b for b in range(teaching.layout.n_blocks) if not done[b]]


def finished_already(config: DumpConfig, resume: bool) -> bool:
    """A resume of a cache whose blocks are all done: nothing for a cluster to do (read before Ray starts)."""
    from ..store import CacheStore

    if not resume:
        return False
    try:
        return bool(CacheStore(config.out).done_mask().all())
    except LogitcacheError:  # no cache there, or not a whole one: prepare_driver's checks say what
        return False


def dump_ray(config: DumpConfig, resume: bool = False, overwrite: bool = False,
             progress: ProgressHook = NULL_PROGRESS) -> RayDumpReport:
    """Write (or, with `resume`, finish) the cache of `config` on a Ray cluster's workers. The store is
    prepared on a thread while Ray starts (each takes seconds: the teachers' architectures, the cluster's
    processes); a refusal of the store still comes first, and stops the cluster this call started."""
    from concurrent.futures import ThreadPoolExecutor

    from ..store import CacheStore, cache_summary
    from ..store.writers import record_writer, writers_of

    ray = import_ray()
    started = False
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="logitcache-prepare") as pool:
            prepared = pool.submit(prepare_driver, config, resume, overwrite)
            if not finished_already(config, resume):
                try:
                    started = connect(ray, config)
                except LogitcacheError:
                    prepared.result()  # the store's refusal, if any, is the one to report
                    raise
            layout, store, todo = prepared.result()
        report = RayDumpReport(path=str(config.out), n_rows=layout.n_rows, blocks_skipped=layout.n_blocks - len(todo))
        t_start = time.perf_counter()
        progress.start("dump (blocks)", len(todo))
        try:
            if todo:
                started = connect(ray, config) or started
                for kind in run_blocks(ray, config, todo, report, progress):
                    record_writer(store, json.loads(kind))  # a kind two workers raced to list is listed now
        finally:
            progress.finish()
    finally:
        if started:
            ray.shutdown()
    report.seconds = time.perf_counter() - t_start
    missing = int((~CacheStore(config.out).done_mask()).sum())
    if missing:
        raise LogitcacheError(f"{missing} blocks of {config.out} are not done after the Ray job; rerun with --resume")
    report.tokens = sum(stop - start for start, stop in map(layout.block_range, todo)) * layout.seq_len
    report.tokens_per_s = report.tokens / max(report.seconds, 1e-9)
    report.writers = writers_of(store)
    report.summary = cache_summary(config.out)
    log.info("ray: wrote %d blocks (%d already done) with %d worker processes, %d restarts, at %.0f tokens/s",
             report.blocks_written, report.blocks_skipped, len(report.worker_pids), report.restarts,
             report.tokens_per_s)
    return report
