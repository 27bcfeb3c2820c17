"""The one training loop shared by teachers and students; the loss is a pluggable `Objective`.

Exact resume: data order is a pure function of (seed, epoch), so a checkpoint needs only the step;
model, optimizer, scheduler and RNG states are saved atomically (write, then rename).
Under torchrun each rank takes a contiguous slice of every global batch and DDP averages gradients,
so N processes follow the same loss curve as one process with the same global batch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import crc32c
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import distributed as D
from .cache import fault_pause
from .configs import check, write_json_atomic
from .errors import LogitcacheError
from .progress import NULL_PROGRESS, ProgressHook
from .losses import fused_next_token_ce

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-4
    batch_size: int = 32  # global: sequences per optimizer step, over all ranks and micro-batches
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int = 0  # > 0 overrides epochs
    warmup_steps: int = 200
    weight_decay: float = 0.1
    eval_every: int = 0  # also evaluate every N steps (0: only at epoch ends)
    checkpoint_every: int = 0  # also checkpoint every N steps (0: only at epoch ends)
    val_chunks: int = 8192
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA when supported, fp32 on CPU

    def __post_init__(self):
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        check(self.grad_accum > 0, f"grad_accum must be positive, got {self.grad_accum}")
        check(self.batch_size % self.grad_accum == 0, "batch_size must be a multiple of grad_accum")
        check(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        check(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        check(self.weight_decay >= 0, "weight_decay must be >= 0")
        check(self.precision in ("auto", "fp32", "bf16", "fp16"), f"precision must be auto|fp32|bf16|fp16, got {self.precision}")
        check(self.device in ("auto", "cpu", "cuda"), f"device must be auto|cpu|cuda, got {self.device}")


class BatchSource(Protocol):
    """Rows for training: a new permutation per epoch; yields this rank's slice of each global batch."""

    n_rows: int

    def batches(self, epoch: int, start_step: int, batch_size: int, env: D.DistEnv) -> Iterator[dict]: ...


class Objective(Protocol):
    """Loss on one micro-batch: returns (loss, {metric: float tensor}) — CE and KL logged separately."""

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def epoch_permutation(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


class TokenRows:
    """In-memory (N, T) token rows (the teachers' train split)."""

    def __init__(self, rows: np.ndarray, seed: int):
        self.rows = rows
        self.n_rows = rows.shape[0]
        self.seed = seed

    def batches(self, epoch: int, start_step: int, batch_size: int, env: D.DistEnv) -> Iterator[dict]:
        order = epoch_permutation(self.n_rows, self.seed, epoch)
        per_rank = batch_size // env.world
        for step in range(start_step, self.n_rows // batch_size):
            rows = order[step * batch_size:(step + 1) * batch_size][env.rank * per_rank:(env.rank + 1) * per_rank]
            yield {"input_ids": torch.from_numpy(self.rows[np.sort(rows)].astype(np.int64))}


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean CE of positions 0..T-2 predicting tokens 1..T-1. logits (B, T, V), input_ids (B, T)."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), input_ids[:, 1:].reshape(-1))


class CEObjective:
    """Plain language-model loss (teachers, and the no-distillation baseline)."""

    def __call__(self, model, batch):
        logits = model(input_ids=batch["input_ids"]).logits  # (B, T, V)
        ce = fused_next_token_ce(logits, batch["input_ids"])
        return ce, {"ce": ce.detach()}


@torch.no_grad()
def evaluate_ce(model, rows: np.ndarray, batch_size: int, device: torch.device, env: D.DistEnv = D.DistEnv(),
                autocast=contextlib.nullcontext) -> float:
    """Mean next-token CE over `rows` (each rank takes every world-th row; sums are all-reduced)."""
    model.eval()
    mine = rows[env.rank::env.world]
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of CE, predicted tokens)
    for start in range(0, mine.shape[0], batch_size):
        ids = torch.from_numpy(mine[start:start + batch_size].astype(np.int64)).to(device)
        with autocast():
            logits = model(input_ids=ids).logits
        n = ids[:, 1:].numel()
        totals[0] += next_token_ce(logits, ids).double() * n
        totals[1] += n
    D.all_reduce_sum(totals)
    model.train()
    return float(totals[0] / totals[1].clamp(min=1))


def lr_lambda(warmup: int, total: int):
    """Linear warmup then cosine decay to zero (the paper's schedule)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(model, cfg: TrainConfig):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
    )


def autocast_for(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


@dataclass
class TrainReport:
    steps: int = 0
    best_val_ce: float = float("inf")
    best_step: int = 0
    final_val_ce: float = float("nan")
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    history: list = field(default_factory=list)
    skipped_blocks: list = field(default_factory=list)


CHECKPOINT = "checkpoint"


CHECKPOINT_MAGIC = b"LCCK"  # trailer: magic, crc32c (uint32 LE), payload size (uint64 LE)
TRAILER_BYTES = 16


def _crc32c_of(f, size: int) -> int:
    """crc32c of the first `size` bytes of an open file, read in 16 MiB pieces (never whole)."""
    crc, left = 0, size
    f.seek(0)
    while left > 0 and (piece := f.read(min(left, 1 << 24))):
        crc, left = crc32c.crc32c(piece, crc), left - len(piece)
    return crc


def save_checkpoint(out: Path, state: dict) -> None:
    """torch.save into a temp file, a checksum trailer, then rename: a kill never leaves half a
    checkpoint, and a damaged one is refused on resume instead of loading changed weights."""
    folder = out / CHECKPOINT
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pt.tmp"
    torch.save(state, tmp)
    size = tmp.stat().st_size
    with open(tmp, "r+b") as f:
        crc = _crc32c_of(f, size)
        f.seek(size)
        f.write(CHECKPOINT_MAGIC + crc.to_bytes(4, "little") + size.to_bytes(8, "little"))
        f.flush()
        os.fsync(f.fileno())
    fault_pause("LOGITCACHE_FAULT_CHECKPOINT_PAUSE")  # fault-injection tests: kill between write and rename
    os.replace(tmp, folder / "state.pt")


def load_checkpoint(out: Path) -> dict | None:
    path = out / CHECKPOINT / "state.pt"
    if not path.exists():
        return None
    total = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(total - TRAILER_BYTES, 0))
        trailer = f.read(TRAILER_BYTES)
        size = total - TRAILER_BYTES
        if len(trailer) < TRAILER_BYTES or trailer[:4] != CHECKPOINT_MAGIC:
            raise LogitcacheError(f"checkpoint {path} has no checksum trailer (truncated, or not written by logitcache); "
                                  "delete it to start over")
        if int.from_bytes(trailer[8:], "little") != size or _crc32c_of(f, size) != int.from_bytes(trailer[4:8], "little"):
            raise LogitcacheError(f"checkpoint {path} fails its checksum (changed after writing); delete it to start over")
    try:  # the zip reader finds its directory from the end and ignores the trailer after it
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LogitcacheError(f"checkpoint {path} is unreadable ({exc.__class__.__name__}); delete it to start over") from None


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines logged after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def fit(
    model,
    source: BatchSource,
    objective: Objective,
    cfg: TrainConfig,
    out: Path,
    val_rows: np.ndarray,
    run_config: dict,
    resume: bool = False,
    progress: ProgressHook = NULL_PROGRESS,
    save_extra=None,
) -> TrainReport:
    """Train `model` in place; write the best model (by validation CE) to `out` with save_pretrained.

    `run_config` is the resolved config of the whole stage: it is saved beside the checkpoint and a
    resume from a checkpoint made with a different one is refused.
    `save_extra(out)` writes extra files (the tokenizer) next to each saved model.
    """
    env = D.dist_env()
    device = D.pick_device(cfg.device, env)
    D.init(env, device)
    check(cfg.batch_size % (env.world * cfg.grad_accum) == 0,
          f"batch_size {cfg.batch_size} must be a multiple of world size x grad_accum ({env.world} x {cfg.grad_accum})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model.to(device)
    model.train()
    steps_per_epoch = source.n_rows // cfg.batch_size
    check(steps_per_epoch > 0, f"{source.n_rows} rows are fewer than one batch of {cfg.batch_size}")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(min(cfg.warmup_steps, total_steps // 2), total_steps))
    autocast = autocast_for(device, cfg.precision)
    metrics_path = out / "metrics.jsonl"

    report = TrainReport()
    step = 0
    state = load_checkpoint(out) if resume else None
    if resume and state is None:
        log.info("no checkpoint in %s: starting from scratch", out)
    if state is not None:
        if state["config"] != run_config:
            changed = sorted(k for k in set(state["config"]) | set(run_config) if state["config"].get(k) != run_config.get(k))
            raise LogitcacheError(f"checkpoint in {out} was made with a different config (differs in: {', '.join(changed)})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step = state["step"]
        report.best_val_ce, report.best_step = state["best_val_ce"], state["best_step"]
        if env.is_main:
            _truncate_metrics(metrics_path, step)
        log.info("resumed from step %d", step)
    elif env.is_main:
        metrics_path.unlink(missing_ok=True)
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    if env.is_main:
        write_json_atomic(out / "logitcache_config.json", run_config)
    D.barrier()

    wrapped = DistributedDataParallel(model) if env.world > 1 else model
    per_rank = cfg.batch_size // env.world
    micro = per_rank // cfg.grad_accum

    def log_metrics(record: dict) -> None:
        if env.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        report.history.append(record)

    def checkpoint() -> None:
        if env.is_main:
            save_checkpoint(out, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": _rng_state(), "step": step,
                "best_val_ce": report.best_val_ce, "best_step": report.best_step, "config": run_config,
            })
        D.barrier()

    def validate() -> float:
        val_ce = evaluate_ce(model, val_rows, max(micro, 8), device, env, autocast)
        log_metrics({"step": step, "val_ce": val_ce})
        if val_ce < report.best_val_ce:
            report.best_val_ce, report.best_step = val_ce, step
            if env.is_main:
                save_model(model, out / "best", save_extra)
        D.barrier()
        return val_ce

    progress.start("train", total_steps)
    progress.update(step)
    tokens_seen, t_start = 0, time.perf_counter()
    while step < total_steps:
        epoch, start_in_epoch = divmod(step, steps_per_epoch)
        for batch in source.batches(epoch, start_in_epoch, cfg.batch_size, env):
            sums: dict[str, torch.Tensor] = {}
            for i in range(cfg.grad_accum):
                part = {k: v[i * micro:(i + 1) * micro].to(device, non_blocking=True) for k, v in batch.items()}
                sync = i == cfg.grad_accum - 1 or env.world == 1
                with (contextlib.nullcontext() if sync else wrapped.no_sync()), autocast():
                    loss, metrics = objective(wrapped, part)
                (loss / cfg.grad_accum).backward()
                for name, value in metrics.items():
                    sums[name] = sums.get(name, 0.0) + value.float() / cfg.grad_accum
                sums["loss"] = sums.get("loss", 0.0) + loss.detach().float() / cfg.grad_accum
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += batch["input_ids"].numel() * env.world
            names = sorted(sums)
            values = D.all_reduce_mean(torch.stack([sums[n] for n in names]).detach())
            record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0]}
            record.update({n: float(v) for n, v in zip(names, values.tolist())})
            elapsed = time.perf_counter() - t_start
            record["elapsed_s"] = elapsed
            record["tokens_per_s"] = tokens_seen / max(elapsed, 1e-9)
            log_metrics(record)
            progress.update(1, loss=record["loss"], tok_s=record["tokens_per_s"])
            end_of_epoch = step % steps_per_epoch == 0
            if (cfg.eval_every and step % cfg.eval_every == 0) or end_of_epoch or step == total_steps:
                validate()
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or end_of_epoch or step == total_steps:
                checkpoint()
            if step >= total_steps:
                break
    progress.finish()
    report.steps = step
    report.seconds = time.perf_counter() - t_start
    report.tokens_per_s = tokens_seen / max(report.seconds, 1e-9)
    vals = [r["val_ce"] for r in report.history if "val_ce" in r]
    report.final_val_ce = vals[-1] if vals else float("nan")
    if env.is_main:
        finalize(out, save_extra)
    D.barrier()
    return report


def save_model(model, folder: Path, save_extra=None) -> None:
    """save_pretrained into a temp folder, then swap it in."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if save_extra:
        save_extra(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def finalize(out: Path, save_extra=None) -> None:
    """Copy the best model's files to `out` itself, so `from_pretrained(out)` loads the best."""
    best = out / "best"
    for f in best.iterdir():
        shutil.copy2(f, out / f.name)
    (out / "COMPLETE").write_text("ok\n")


def read_metrics(out: Path) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
