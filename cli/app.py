"""`logitcache`: one Typer app, one module per command."""
from __future__ import annotations

import typer

from . import (bench, copy, corpus, dump, evaluate, export, export_targets, inspect_cache, plan, prepare, run,
               train_student, train_teacher, verify)
from .common import STATE, OneLineErrors, setup_logging

app = typer.Typer(
    name="logitcache",
    help="Offline logit-caching distillation: run the teachers once, distil from a compressed top-k cache.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=OneLineErrors,
)


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what the library does (INFO level)."),
) -> None:
    STATE["debug"] = debug
    setup_logging(verbose)


app.add_typer(corpus.app, name="corpus")
app.command("prepare")(prepare.command)
app.command("train-teacher")(train_teacher.command)
app.command("dump")(dump.command)
app.command("inspect")(inspect_cache.command)
app.command("verify")(verify.command)
app.command("copy")(copy.command)
app.command("train-student")(train_student.command)
app.command("eval")(evaluate.command)
app.command("plan")(plan.command)
app.command("export")(export.command)
app.command("export-targets")(export_targets.command)
app.add_typer(bench.app, name="bench")
app.command("run")(run.command)


def main() -> None:
    try:
        app()
    finally:
        import sys

        if "torch.distributed" in sys.modules:  # never import torch just to close it
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    main()
