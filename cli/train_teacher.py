"""`logitcache train-teacher`: one GPT-2 or LLaMA teacher, saved in Hugging Face format."""
from pathlib import Path
from typing import Annotated

import typer

from logitcache.configs import prepare_output
from logitcache.teacher import TeacherConfig, train_teacher

from . import common as C


@C.handle_errors
def command(
    data: Annotated[Path, typer.Option("--data", help="Prepared data dir (WORK/data).")],
    arch: Annotated[str, typer.Option("--arch", help="gpt2 or llama.")],
    preset: Annotated[str, typer.Option("--preset", help="Model preset, e.g. llama-small, gpt2-705m.")],
    out: Annotated[Path, typer.Option("--out", help="Output model dir (save_pretrained + tokenizer.json).")],
    batch_size: C.BatchSize = 32,
    grad_accum: C.GradAccum = 1,
    lr: C.Lr = 3e-4,
    epochs: C.Epochs = 4,
    max_steps: C.MaxSteps = 0,
    warmup_steps: C.Warmup = 200,
    weight_decay: C.WeightDecay = 0.1,
    eval_every: C.EvalEvery = 0,
    checkpoint_every: C.CkptEvery = 0,
    val_chunks: C.ValChunks = 8192,
    seed: C.Seed = 0,
    device: C.Device = "auto",
    precision: C.Precision = "auto",
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Expected vocabulary (0: the data's); refused if it differs.")] = 0,
    resume: C.Resume = False,
    overwrite: C.Overwrite = False,
) -> None:
    """Train a teacher with AdamW, warmup + cosine, per-epoch validation; the best epoch is kept."""
    train = C.train_config(locals())
    config = TeacherConfig(data=data, out=out, arch=arch, preset=preset, vocab_size=vocab_size, train=train)
    prepare_output(out, resume=resume, overwrite=overwrite)
    report = train_teacher(config, resume=resume, progress=C.progress_hook())
    C.print_table(f"teacher {out}", ["steps", "best val CE", "at step", "tokens/s", "seconds"],
                  [[report.steps, report.best_val_ce, report.best_step, report.tokens_per_s, report.seconds]])
