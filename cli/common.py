"""Shared CLI plumbing: one-line errors with exit code 2, rich progress bars, tables, logging."""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from logitcache.errors import LogitcacheError
from logitcache.progress import ProgressHook

console = Console(stderr=True)
out_console = Console()
STATE = {"debug": False}


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def handle_errors(func):
    """Bad input becomes one line on stderr and exit code 2 (a traceback only with --debug)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (LogitcacheError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            if STATE["debug"]:
                raise
            message = str(exc) if isinstance(exc, LogitcacheError) else f"{exc.strerror}: {exc.filename}"
            console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted; rerun with --resume to continue")
            raise typer.Exit(130) from None

    return wrapper


class RichProgress(ProgressHook):
    """Progress bars for the library's long loops."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self.progress: Progress | None = None
        self.task = None

    def start(self, name: str, total: int | None = None) -> None:
        self.finish()
        if self.disable:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(name, total=total, info="")

    def update(self, advance: int = 1, **fields) -> None:
        if self.progress is None:
            return
        info = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self.progress.update(self.task, advance=advance, **({"info": info} if info else {}))

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def progress_hook() -> ProgressHook:
    import os

    return RichProgress(disable=int(os.environ.get("RANK", 0)) != 0)


def print_table(title: str, columns: list[str], rows: list[list], caption: str | None = None) -> None:
    import os

    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun, rank 0 reports
        return
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    out_console.print(table)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: Optional[Path], payload: dict) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def train_config(values: dict):
    """The TrainConfig whose fields are the command's options of the same names."""
    import dataclasses

    from logitcache.train import TrainConfig

    return TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig)})


# Options shared by train-teacher and train-student (the fields of TrainConfig).
BatchSize = Annotated[int, typer.Option("--batch-size", help="Global batch: sequences per optimizer step.")]
GradAccum = Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")]
Lr = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")]
Epochs = Annotated[int, typer.Option("--epochs", help="Epochs over the training rows.")]
MaxSteps = Annotated[int, typer.Option("--max-steps", help="Stop after this many optimizer steps (overrides --epochs; 0: off).")]
Warmup = Annotated[int, typer.Option("--warmup-steps", help="Linear warmup steps before the cosine decay.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay on matrices.")]
EvalEvery = Annotated[int, typer.Option("--eval-every", help="Also validate every N steps (0: at epoch ends only).")]
CkptEvery = Annotated[int, typer.Option("--checkpoint-every", help="Also checkpoint every N steps (0: at epoch ends only).")]
ValChunks = Annotated[int, typer.Option("--val-chunks", help="Size of the fixed validation subset of dev.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for initialisation and data order.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Precision = Annotated[str, typer.Option("--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace what --out already holds.")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Also write the numbers to this JSON file.")]
