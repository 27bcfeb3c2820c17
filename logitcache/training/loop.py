"""The one training loop shared by teachers and students; the loss is a pluggable `Objective`.

Exact resume: data order is a pure function of (seed, epoch), so a checkpoint needs only the step;
model, optimizer, scheduler and RNG states are saved atomically (write, then rename).
Under torchrun each rank takes a contiguous slice of every global batch and DDP (or FSDP2, `--fsdp`:
training/parallel.py) averages gradients, so N processes follow the same loss curve as one process with the
same global batch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from .._settings import check
from ..config import TrainConfig  # noqa: F401  (re-exported)
from ..errors import LogitcacheError
from ..files import atomic_dir, json_text, recover_dir, write_json_atomic, write_text_atomic
from ..progress import NULL_PROGRESS, ProgressHook
from ..runtime import device as D
from . import parallel
from .checkpoint import CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .losses import fused_next_token_ce, next_token_ce  # noqa: F401  (next_token_ce re-exported)
from .metrics import lm_metrics

log = logging.getLogger(__name__)

TENSORBOARD = "tensorboard"
RUNTIME_KEYS = ("world_size",)  # recorded beside the artifact; a resume may change them (same global batch)
RUNTIME_TRAIN_KEYS = ("fsdp", "activation_checkpointing")  # how the same step is computed: a resume may change them


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


class CEObjective:
    """Plain language-model loss (teachers, and the no-distillation baseline)."""

    def __call__(self, model, batch):
        logits = model(input_ids=batch["input_ids"]).logits  # (B, T, V)
        ce = fused_next_token_ce(logits, batch["input_ids"])
        return ce, {"ce": ce.detach()}


def enable_activation_checkpointing(model) -> None:
    """Keep only each decoder layer's input in the forward and recompute the layer in the backward, through the
    model's own gradient checkpointing (non-reentrant: it works with FSDP's hooks and with inputs that need
    no gradient)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise LogitcacheError(f"--activation-checkpointing: {type(model).__name__} has no gradient checkpointing")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # no key/value cache while training (transformers warns otherwise)


def check_parallel(cfg: TrainConfig) -> None:
    """Refuse a wrapping that cannot run, before the stage touches its output (the Trainer runs the same checks)."""
    if cfg.fsdp:
        env = D.dist_env()
        parallel.check_fsdp(env)
        parallel.mixed_precision(D.resolve_precision(D.pick_device(cfg.device, env), cfg.precision))


def comparable(run_config: dict) -> dict:
    """The settings a resume must share with its checkpoint: all but the runtime keys."""
    kept = {k: v for k, v in run_config.items() if k not in RUNTIME_KEYS}
    if isinstance(kept.get("train"), dict):
        kept["train"] = {k: v for k, v in kept["train"].items() if k not in RUNTIME_TRAIN_KEYS}
    return kept


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


def allocate_optimizer_state(optimizer: torch.optim.AdamW) -> None:
    """AdamW's moments made before the first forward, as zeros (what its first step would make).

    Made lazily, they land in the memory the first step's logits freed, so every later step's logits need
    a new block beside that hole: on CPU the heap keeps both (1.6 GB more peak RSS for a 4 x 512 student at
    V = 128,256, 8 x 512 tokens), and a GPU's caching allocator cannot release a segment the moments share.
    Made first, they sit below every step's transient buffers, which reuse their own freed blocks."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)  # on the CPU, as AdamW keeps it
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


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
    skipped_steps: int = 0  # steps on which bad blocks left some rank without rows (no update anywhere)


class Trainer:
    """One training run. `run()` = restore, then for each step: `train_step`, `log_step`, and at the
    step's boundaries `validate` and `checkpoint`; `finish` copies the best model to `out`."""

    def __init__(self, model, source: BatchSource, objective: Objective, cfg: TrainConfig, out: Path,
                 val_rows: np.ndarray, run_config: dict, progress: ProgressHook = NULL_PROGRESS, save_extra=None):
        self.env = D.dist_env()
        self.device = D.pick_device(cfg.device, self.env)
        D.init(self.env, self.device)
        check(cfg.batch_size % (self.env.world * cfg.grad_accum) == 0,
              f"batch_size {cfg.batch_size} must be a multiple of world size x grad_accum "
              f"({self.env.world} x {cfg.grad_accum})")
        self.model, self.source, self.objective, self.cfg = model, source, objective, cfg
        self.out, self.val_rows, self.run_config = Path(out), val_rows, run_config
        self.progress, self.save_extra = progress, save_extra
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        model.to(self.device)
        model.train()
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        # sharding replaces the parameters (FSDP2's DTensors): the optimizer is built over the wrapped ones
        self.wrapped = parallel.wrap(model, self.env, cfg.fsdp, D.resolve_precision(self.device, cfg.precision))
        self.steps_per_epoch = source.n_rows // cfg.batch_size
        check(self.steps_per_epoch > 0, f"{source.n_rows} rows are fewer than one batch of {cfg.batch_size}")
        check(val_rows.shape[0] > 0, "the validation split has no chunks (is the dev split empty?)")
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * self.steps_per_epoch
        self.optimizer = make_optimizer(model, cfg)
        allocate_optimizer_state(self.optimizer)
        warmup = min(cfg.warmup_steps, self.total_steps // 2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(warmup, self.total_steps))
        # under FSDP its mixed-precision policy casts the parameters (parallel.mixed_precision): no autocast
        self.autocast = contextlib.nullcontext if cfg.fsdp else D.autocast_for(self.device, cfg.precision)
        # fp16 gradients underflow to 0 without loss scaling; bf16 and fp32 need none (a disabled scaler
        # passes every call through, so their steps are unchanged)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=D.resolve_precision(self.device, cfg.precision) == "fp16")
        self.metrics_path = self.out / "metrics.jsonl"
        self.tensorboard = None
        self.report = TrainReport()
        self.step = 0

    # ------------------------------------------------------------------ state
    def restore(self, resume: bool) -> None:
        """Continue from the checkpoint in `out` (same config only), or start clean."""
        state = load_checkpoint(self.out) if resume else None
        if resume and state is None:
            log.info("no checkpoint in %s: starting from scratch", self.out)
        if state is not None:
            saved, wanted = comparable(state["config"]), comparable(self.run_config)
            if saved != wanted:
                changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
                raise LogitcacheError(f"checkpoint in {self.out} was made with a different config (differs in: {', '.join(changed)})")
            parallel.load_full_state(self.wrapped, state["model"], self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            self.step = state["step"]
            self.report.best_val_ce, self.report.best_step = state["best_val_ce"], state["best_step"]
            self.report.skipped_steps = state.get("skipped_steps", 0)
            if self.env.is_main:
                _truncate_metrics(self.metrics_path, self.step)
            log.info("resumed from step %d", self.step)
        elif self.env.is_main:
            self.metrics_path.unlink(missing_ok=True)
            shutil.rmtree(self.out / CHECKPOINT, ignore_errors=True)
            shutil.rmtree(self.out / TENSORBOARD, ignore_errors=True)
        if self.env.is_main:
            write_json_atomic(self.out / "logitcache_config.json", self.run_config)
            if self.cfg.tensorboard:
                self.tensorboard = open_tensorboard(self.out / TENSORBOARD, self.step)
        D.barrier()

    def checkpoint(self) -> None:
        model_state, optim_state = parallel.full_state(self.wrapped, self.optimizer)  # every rank: FSDP gathers
        if self.env.is_main:
            save_checkpoint(self.out, {
                "model": model_state, "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng_state(), "step": self.step,
                "best_val_ce": self.report.best_val_ce, "best_step": self.report.best_step,
                "skipped_steps": self.report.skipped_steps, "config": self.run_config,
            })
        D.barrier()

    # ------------------------------------------------------------------ steps
    def micro_batches(self, batch: dict) -> list[dict]:
        """This rank's rows split into grad_accum near-equal micro-batches (bad blocks can leave fewer rows)."""
        return [{k: v.to(self.device, non_blocking=True) for k, v in zip(batch, parts)}
                for parts in zip(*(torch.tensor_split(v, self.cfg.grad_accum) for v in batch.values()))]

    def all_ranks_have_rows(self, micros: list[dict]) -> bool:
        """One decision for every rank: a step runs only if no rank has an empty micro-batch (an empty
        one would divide by zero, and a rank that skipped alone would leave DDP waiting forever)."""
        fewest = torch.tensor([min(m["input_ids"].shape[0] for m in micros)], dtype=torch.float64, device=self.device)
        return bool(D.all_reduce_min(fewest).item() > 0)

    def train_step(self, micros: list[dict]) -> dict[str, float]:
        """Forward and backward over the micro-batches, clip, one optimizer step; mean metrics over ranks."""
        sums: dict[str, torch.Tensor] = {}
        n = len(micros)
        for i, part in enumerate(micros):
            with parallel.no_sync(self.wrapped, i == n - 1), self.autocast():
                loss, metrics = self.objective(self.wrapped, part)
            self.scaler.scale(loss / n).backward()
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value.float() / n
            sums["loss"] = sums.get("loss", 0.0) + loss.detach().float() / n
        self.scaler.unscale_(self.optimizer)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) where an fp16 gradient overflowed
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        names = sorted(sums)
        values = D.all_reduce_mean(torch.stack([sums[k] for k in names]).detach())
        return dict(zip(names, values.tolist()))

    def skip_step(self) -> None:
        """Bad blocks left some rank without rows: no update anywhere, the schedule still advances so the
        data plan and a resume stay aligned with the step count."""
        self.scheduler.step()
        self.report.skipped_steps += 1
        log.warning("step %d skipped on every rank: bad blocks left a micro-batch empty", self.step + 1)

    def log_metrics(self, record: dict) -> None:
        if self.env.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json_text(record) + "\n")
            if self.tensorboard is not None:
                for name, value in record.items():
                    if name not in ("step", "epoch") and isinstance(value, (int, float)):
                        self.tensorboard.add_scalar(name, value, record["step"])
        self.report.history.append(record)

    def validate(self) -> float:
        micro = self.cfg.batch_size // (self.env.world * self.cfg.grad_accum)
        # the model, not a DDP wrapper (whose forward broadcasts buffers: ranks with fewer rows would hang); FSDP2
        # shards the model in place, so its forward is the sharded one, run in lockstep
        val_ce = lm_metrics(self.model, self.val_rows, max(micro, 8), self.device, self.env, self.autocast,
                            lockstep=parallel.is_sharded(self.wrapped))["ce"]
        self.log_metrics({"step": self.step, "val_ce": val_ce})
        if val_ce < self.report.best_val_ce:
            self.report.best_val_ce, self.report.best_step = val_ce, self.step
            model_state = parallel.full_state(self.wrapped)[0] if parallel.is_sharded(self.wrapped) else None
            if self.env.is_main:
                save_model(self.model, self.out / "best", self.save_extra, model_state)
        D.barrier()
        return val_ce

    # ------------------------------------------------------------------ loop
    def run(self, resume: bool = False) -> TrainReport:
        self.restore(resume)
        cfg, report = self.cfg, self.report
        self.progress.start("train", self.total_steps)
        self.progress.update(self.step)
        tokens_seen, t_start = 0, time.perf_counter()
        while self.step < self.total_steps:
            epoch, start_in_epoch = divmod(self.step, self.steps_per_epoch)
            for batch in self.source.batches(epoch, start_in_epoch, cfg.batch_size, self.env):
                micros = self.micro_batches(batch)
                record = {"step": self.step + 1, "epoch": epoch}
                if self.all_ranks_have_rows(micros):
                    record.update(self.train_step(micros))
                else:
                    self.skip_step()
                    record["skipped"] = 1
                self.step += 1
                record["lr"] = self.scheduler.get_last_lr()[0]
                tokens_seen += batch["input_ids"].numel() * self.env.world
                elapsed = time.perf_counter() - t_start
                record.update(elapsed_s=elapsed, tokens_per_s=tokens_seen / max(elapsed, 1e-9))
                self.log_metrics(record)
                self.progress.update(1, loss=record.get("loss", float("nan")), tok_s=record["tokens_per_s"])
                end_of_epoch = self.step % self.steps_per_epoch == 0
                last = self.step == self.total_steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or end_of_epoch or last:
                    self.validate()
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or end_of_epoch or last:
                    self.checkpoint()
                if self.step >= self.total_steps:
                    break
        self.progress.finish()
        report.steps = self.step
        report.seconds = time.perf_counter() - t_start
        report.tokens_per_s = tokens_seen / max(report.seconds, 1e-9)
        vals = [r["val_ce"] for r in report.history if "val_ce" in r]
        report.final_val_ce = vals[-1] if vals else float("nan")
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.env.is_main:
            finalize(self.out)
        D.barrier()
        return report


def fit(model, source: BatchSource, objective: Objective, cfg: TrainConfig, out: Path, val_rows: np.ndarray,
        run_config: dict, resume: bool = False, progress: ProgressHook = NULL_PROGRESS, save_extra=None) -> TrainReport:
    """Train `model` in place; write the best model (by validation CE) to `out` with save_pretrained.

    `run_config` is the resolved config of the whole stage: it is saved beside the checkpoint (with the
    world size) and a resume from a checkpoint made with a different one is refused.
    `save_extra(out)` writes extra files (the tokenizer) next to each saved model.
    """
    run_config = dict(run_config) | {"world_size": D.dist_env().world}
    return Trainer(model, source, objective, cfg, out, val_rows, run_config, progress, save_extra).run(resume)


def open_tensorboard(folder: Path, purge_step: int):
    """A SummaryWriter beside metrics.jsonl; events after `purge_step` (a resumed run redoes them) are dropped."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LogitcacheError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step or None)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines logged after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def save_model(model, folder: Path, save_extra=None, state_dict: dict | None = None) -> None:
    """save_pretrained into a temp folder, then swap it in; `state_dict`: the full weights of a sharded model
    (`parallel.full_state`), saved as a plain Hugging Face folder."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp), state_dict=state_dict)
        if save_extra:
            save_extra(tmp)


def finalize(out: Path) -> None:
    """Copy the best model's files to `out` itself, so `from_pretrained(out)` loads the best."""
    best = out / "best"
    recover_dir(best)
    for f in best.iterdir():
        shutil.copy2(f, out / f.name)
    (out / "COMPLETE").write_text("ok\n")


def read_metrics(out: Path) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
