"""`logitcache bench cache-size`: cache size against top-k accuracy."""
from pathlib import Path
from typing import Annotated

import typer

from logitcache.bench import CacheSizeConfig, cache_size

from . import common as C

app = typer.Typer(help="Benchmarks that print a table and write JSON.", no_args_is_help=True)


def _ints(text: str, what: str) -> tuple[int, ...]:
    from logitcache.errors import LogitcacheError

    if not text.strip():
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise LogitcacheError(f"{what} must be a comma-separated list of integers, got {text!r}") from None


@app.command("cache-size")
@C.handle_errors
def cache_size_command(
    data: Annotated[Path, typer.Option("--data", help="Prepared data dir (WORK/data).")],
    teacher: Annotated[list[Path], typer.Option("--teacher", help="Teacher dir (repeat for an ensemble).")],
    out: Annotated[Path, typer.Option("--out", help="Output dir: cache_size.json/.md/.png and the caches.")],
    k: Annotated[str, typer.Option("--k", help="Comma-separated k values.")] = "1,2,4,8,16,32,64,128,256",
    prob_dtype: Annotated[str, typer.Option("--prob-dtype", help="Comma-separated probability encodings (sqrt-u7, sqrt-u8, log-u6, log-u7, log-u8, float16, float32).")] = "sqrt-u7",
    samples: Annotated[str, typer.Option("--samples", help="Comma-separated draw counts for sampled-target rows (empty: none).")] = "",
    chunks: Annotated[int, typer.Option("--chunks", help="Number of train chunks to dump for each row.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="Distillation temperature T.")] = 2.0,
    combine: Annotated[str, typer.Option("--combine", help="mean-logits or mean-probs.")] = "mean-logits",
    train_steps: Annotated[int, typer.Option("--train-steps", help="Also distil a student from each cache for S steps (0: off).")] = 0,
    student_preset: Annotated[str, typer.Option("--student-preset", help="Student preset for --train-steps.")] = "llama-student-small",
    student_batch_size: Annotated[int, typer.Option("--student-batch-size", help="Student batch size for --train-steps.")] = 16,
    student_lr: Annotated[float, typer.Option("--student-lr", help="Student learning rate for --train-steps.")] = 2e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of sampled targets and students.")] = 0,
    json_out: C.JsonOut = None,
) -> None:
    """One dump per k (and per prob dtype) on the same chunks: bytes/token against mass kept, KL, top-1 agreement."""
    config = CacheSizeConfig(data=data, teachers=tuple(teacher), out=out, ks=_ints(k, "--k"),
                             prob_dtypes=tuple(x.strip() for x in prob_dtype.split(",") if x.strip()),
                             samples=_ints(samples, "--samples"), chunks=chunks, temperature=temperature, combine=combine,
                             train_steps=train_steps, student_preset=student_preset,
                             student_batch_size=student_batch_size, student_lr=student_lr, seed=seed)
    payload = cache_size(config, progress=C.progress_hook())
    rows = [[r["targets"], r["k"], r["prob_dtype"], r["bytes_per_token"], r["raw_bytes_per_token"], r["compression_ratio"],
             r["mass_kept"], r["kl"], r["top1_agreement"], r["dump_tokens_per_s"],
             "-" if r["student_ce"] is None else r["student_ce"]] for r in payload["rows"]]
    C.print_table("cache size vs accuracy", ["targets", "k/N", "prob dtype", "bytes/token", "raw", "ratio", "mass kept",
                                             "KL", "top-1", "dump tok/s", "student CE"], rows,
                  caption=f"written to {out}/cache_size.json, .md, .png")
    C.write_json(json_out, payload)
