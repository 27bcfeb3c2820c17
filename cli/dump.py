"""`logitcache dump`: the teacher-inference job that writes the compressed cache."""
from pathlib import Path
from typing import Annotated

import typer

from logitcache.cache import cache_summary
from logitcache.configs import prepare_output
from logitcache.dump import DumpConfig, dump

from . import common as C


@C.handle_errors
def command(
    data: Annotated[Path, typer.Option("--data", help="Prepared data dir (WORK/data).")],
    teacher: Annotated[list[Path], typer.Option("--teacher", help="A teacher model dir (repeat for an ensemble).")],
    out: Annotated[Path, typer.Option("--out", help="The cache to write (WORK/cache.zarr).")],
    split: Annotated[str, typer.Option("--split", help="Which split to cache: train, dev or test.")] = "train",
    top_k: Annotated[int, typer.Option("--top-k", help="Ids kept per position (top-k targets).")] = 32,
    temperature: Annotated[float, typer.Option("--temperature", help="Distillation temperature T of the stored probabilities.")] = 2.0,
    combine: Annotated[str, typer.Option("--combine", help="mean-logits (the paper's code) or mean-probs.")] = "mean-logits",
    prob_dtype: Annotated[str, typer.Option("--prob-dtype", help="Probability encoding: sqrt-u7 (default: 7-bit codes of sqrt(p)), sqrt-u8 (finer), log-u6/u7/u8 (codes of log p), float16 or float32.")] = "sqrt-u7",
    targets: Annotated[str, typer.Option("--targets", help="topk, or sample (importance-sampled unique ids).")] = "topk",
    samples: Annotated[int, typer.Option("--samples", help="Sampled targets: draws per position.")] = 16,
    proposal_temperature: Annotated[float, typer.Option("--proposal-temperature", help="Sampled targets: draw from p^(1/this), renormalised.")] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Chunks per teacher forward pass.")] = 16,
    block_rows: Annotated[int, typer.Option("--block-rows", help="Rows per committed block (one storage chunk).")] = 256,
    max_chunks: Annotated[int, typer.Option("--max-chunks", help="Cache N chunks spread evenly over the split (0: all).")] = 0,
    row_selection: Annotated[str, typer.Option("--row-selection", help="With --max-chunks: spread (evenly over the split) or first.")] = "spread",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampled targets.")] = 0,
    device: C.Device = "auto",
    precision: C.Precision = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted dump: redo only blocks not marked done.")] = False,
    overwrite: C.Overwrite = False,
) -> None:
    """Run the teachers once over every chunk; write top-k ensemble targets to a Zarr cache.

    Under `torchrun --nproc-per-node N` each rank writes a disjoint set of blocks.
    """
    config = DumpConfig(data=data, teachers=tuple(teacher), out=out, split=split, top_k=top_k, temperature=temperature,
                        combine=combine, prob_dtype=prob_dtype, targets=targets, samples=samples,
                        proposal_temperature=proposal_temperature, batch_size=batch_size, block_rows=block_rows,
                        max_chunks=max_chunks, row_selection=row_selection, seed=seed, device=device, precision=precision)
    if overwrite and not resume:
        prepare_output(out, overwrite=True)
    report = dump(config, resume=resume, progress=C.progress_hook())
    if report.rank == 0:
        summary = cache_summary(out)
        C.print_table(f"cache {out}", ["rows", "blocks written", "blocks already done", "tokens/s", "bytes/token", "blocks done"],
                      [[report.n_rows, report.blocks_written, report.blocks_skipped, report.tokens_per_s,
                        summary["bytes_per_token"], f"{summary['blocks_done']}/{summary['n_blocks']}"]])
