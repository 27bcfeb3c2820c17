"""`logitcache prepare`: cleaning, tokenizer, chunked token store."""
from pathlib import Path
from typing import Annotated

import typer

from logitcache.configs import prepare_output
from logitcache.data import PrepareConfig, prepare

from .common import JsonOut, Overwrite, handle_errors, print_table, progress_hook, write_json


@handle_errors
def command(
    data: Annotated[Path, typer.Option("--data", help="Raw text: <source>.<split> files (BabyLM layout).")],
    out: Annotated[Path, typer.Option("--out", help="Output dir (WORK/data): tokenizer.json and tokens.zarr.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="BPE vocabulary size.")] = 16000,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per chunk.")] = 128,
    val_chunks: Annotated[int, typer.Option("--val-chunks", help="Size of the fixed validation subset of dev.")] = 8192,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the validation subset.")] = 0,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Clean each source, train the BPE tokenizer on train, cut every split into chunks."""
    config = PrepareConfig(data=data, out=out, vocab_size=vocab_size, seq_len=seq_len, val_chunks=val_chunks, seed=seed)
    prepare_output(out, overwrite=overwrite)
    report = prepare(config, progress=progress_hook())
    rows = [[name, s["words"], s["tokens"], s["replaced_bytes"]] for name, s in sorted(report.sources.items())]
    print_table(f"sources ({out})", ["source", "words", "tokens", "bad bytes replaced"], rows)
    print_table("chunks", ["split", "chunks", "tokens"], [[k, v["chunks"], v["tokens"]] for k, v in report.splits.items()],
                caption=f"vocab {report.vocab_size}, fingerprint {report.fingerprint[:16]}")
    write_json(json_out, report.to_json())
