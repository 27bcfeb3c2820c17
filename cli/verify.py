"""`logitcache verify CACHE`: full integrity check (exit 1 and the failing blocks on any fault)."""
from pathlib import Path
from typing import Annotated

import typer

from logitcache.cache import verify_cache

from . import common as C


@C.handle_errors
def command(cache: Annotated[Path, typer.Argument(help="A cache.zarr written by `logitcache dump`.")]) -> None:
    """Check every block's checksum and done marker, ids < vocab, finite sorted probabilities summing to <= 1."""
    problems = verify_cache(cache, progress=C.progress_hook())
    if problems:
        for line in problems:
            C.out_console.print(f"FAIL {line}", highlight=False)
        C.out_console.print(f"{len(problems)} bad block(s); first: {problems[0]}", highlight=False)
        raise typer.Exit(1)
    C.out_console.print(f"OK {cache}: every block done and intact")
