"""`logitcache train-student`: distillation from the cache, no teacher in memory."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from logitcache.configs import prepare_output
from logitcache.student import StudentConfig, train_student

from . import common as C


@C.handle_errors
def command(
    cache: Annotated[Path, typer.Option("--cache", help="The cache written by `logitcache dump`.")],
    data: Annotated[Path, typer.Option("--data", help="Prepared data dir the cache was made from (WORK/data).")],
    out: Annotated[Path, typer.Option("--out", help="Output model dir.")],
    preset: Annotated[str, typer.Option("--preset", help="Student preset (LLaMA by default).")] = "llama-58m",
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of CE; 1 - alpha weighs T^2 KL. 1 = no distillation.")] = 0.5,
    temperature: Annotated[float, typer.Option("--temperature", help="Distillation temperature (0: the cache's).")] = 0.0,
    retemper: Annotated[bool, typer.Option("--retemper", help="Allow a T other than the cache's (renormalises p^(Tc/T) over kept ids; approximate).")] = False,
    tail: Annotated[str, typer.Option("--tail", help="bucket (tail mass as one bucket) or renormalize (drop it).")] = "bucket",
    kl_reduction: Annotated[str, typer.Option("--kl-reduction", help="token (mean per position) or paper (sum / sequences).")] = "token",
    online_teacher: Annotated[Optional[list[Path]], typer.Option("--online-teacher", help="Reference mode: full-vocabulary targets from this teacher (repeatable).")] = None,
    shuffle_buffer: Annotated[int, typer.Option("--shuffle-buffer", help="Rows in the shuffle buffer (bounds memory).")] = 4096,
    skip_bad_blocks: Annotated[bool, typer.Option("--skip-bad-blocks", help="Skip (and count) blocks that fail their checksum instead of stopping.")] = False,
    batch_size: C.BatchSize = 32,
    grad_accum: C.GradAccum = 1,
    lr: C.Lr = 2.5e-4,
    epochs: C.Epochs = 6,
    max_steps: C.MaxSteps = 0,
    warmup_steps: C.Warmup = 200,
    weight_decay: C.WeightDecay = 0.1,
    eval_every: C.EvalEvery = 0,
    checkpoint_every: C.CkptEvery = 0,
    val_chunks: C.ValChunks = 8192,
    seed: C.Seed = 0,
    device: C.Device = "auto",
    precision: C.Precision = "auto",
    resume: C.Resume = False,
    overwrite: C.Overwrite = False,
) -> None:
    """Train the student on the cache's chunks with alpha*CE + (1-alpha)*T^2*KL over the cached targets."""
    train = C.train_config(locals())
    config = StudentConfig(cache=cache, data=data, out=out, preset=preset, alpha=alpha, temperature=temperature,
                           retemper=retemper, tail=tail, kl_reduction=kl_reduction,
                           online_teachers=tuple(online_teacher or ()), shuffle_buffer=shuffle_buffer,
                           skip_bad_blocks=skip_bad_blocks, train=train)
    prepare_output(out, resume=resume, overwrite=overwrite)
    report = train_student(config, resume=resume, progress=C.progress_hook())
    last = next((r for r in reversed(report.history) if "ce" in r), {})
    C.print_table(f"student {out}", ["steps", "best val CE", "at step", "last CE", "last KL", "tokens/s", "skipped blocks"],
                  [[report.steps, report.best_val_ce, report.best_step, last.get("ce", float("nan")),
                    last.get("kl", float("nan")), report.tokens_per_s, len(report.skipped_blocks)]])
