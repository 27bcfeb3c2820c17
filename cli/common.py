"""Shared CLI plumbing: one-line errors with exit code 2, rich progress bars, tables, logging."""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from logitcache.errors import LogitcacheError
from logitcache.files import json_text
from logitcache.progress import ProgressHook

console = Console(stderr=True)
out_console = Console()
STATE = {"debug": False, "json_stdout": False}


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def handle_errors(func):
    """Bad input, or an OSError (a disk full, a permission refused: the path and the error), becomes one line
    on stderr and exit code 2 (a traceback only with --debug; any other exception is a bug and keeps it)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (LogitcacheError, OSError) as exc:  # OSError: a disk full, a permission, a path that will not go
            if STATE["debug"]:
                raise
            named = isinstance(exc, OSError) and exc.filename is not None
            message = f"{exc.strerror}: {exc.filename}" if named else str(exc)
            error_line(message)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            error_line("interrupted; rerun with --resume to continue", prefix="")
            raise typer.Exit(130) from None

    return wrapper


def error_line(message: str, prefix: str = "error: ") -> None:
    """One line on stderr, never wrapped (rich would wrap at 80 columns when stderr is not a terminal)."""
    message = " ".join(str(message).split())  # a multi-line exception text becomes one line
    sys.stderr.write(f"{prefix}{message}\n")
    sys.stderr.flush()


class OneLineErrors(typer.core.TyperGroup):
    """The root command: a usage error (a bad choice, a missing option) is one line on stderr and exit
    code 2, like every other bad input, instead of click's boxed usage message."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer vendors click
        from typer.exceptions import Abort

        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:  # `logitcache` or `logitcache bench` alone: the help
            sys.stdout.write(exc.format_message() + "\n")
            sys.exit(exc.exit_code)
        except ClickException as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
            error_line(exc.format_message() + where)
            sys.exit(exc.exit_code)
        except Abort:
            error_line("aborted")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)  # an int is the code of a typer.Exit


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
            TimeRemainingColumn(), TextColumn("{task.fields[info]}", markup=False), console=console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(escape(name), total=total, info="")

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
    # Text, never markup: paths, decode recipes (mass_ids[:sum(c[b])]) and names are printed as they are
    table = Table(title=Text(title, style="table.title"),
                  caption=Text(caption, style="table.caption") if caption is not None else None)
    target = console if STATE.get("json_stdout") else out_console  # stdout is the JSON's alone
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    for row in rows:
        table.add_row(*[target.render_str(fmt(v), markup=False) for v in row])  # highlighted as before, no markup
    target.print(table)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def json_to_stdout(json_out: Optional[str]) -> None:
    """With `--json -` the JSON is the only thing on stdout: tables and messages go to stderr."""
    STATE["json_stdout"] = json_out == "-"


def say(text: str) -> None:
    """A plain result line: stdout, or stderr when stdout carries the JSON."""
    (sys.stderr if STATE.get("json_stdout") else sys.stdout).write(text + "\n")


def write_json(path: Optional[str], payload: dict) -> None:
    """`--json PATH` writes a file; `--json -` writes to stdout."""
    if path is None:
        return
    text = json_text(payload, indent=2, default=str) + "\n"  # NaN as null: valid JSON
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


# Options of the commands themselves (not settings of a stage config).
Resume = Annotated[bool, typer.Option("--resume", help="Continue from what --out holds (a checkpoint, or done blocks).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace what --out already holds.")]
StorageOption = Annotated[Optional[list[str]], typer.Option(
    "--storage-option", help="key=value for object storage (s3fs/gcsfs keyword, JSON values, dotted keys nest: "
                             "endpoint_url=http://host:9000, client_kwargs.region_name=eu-west-1); repeatable.")]
JsonOut = Annotated[Optional[str], typer.Option("--json", help="Also write the numbers as JSON to this file ('-': to stdout, "
                                                             "and nothing else goes there).")]


def use_storage_options(pairs: Optional[list[str]]) -> None:
    """--storage-option key=value ... for every URL this command opens."""
    from logitcache.store.backends import set_default_options
    from logitcache.store.location import StorageOptions

    set_default_options(StorageOptions.parse(pairs or []))
