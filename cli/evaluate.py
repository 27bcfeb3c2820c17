"""`logitcache eval`: metrics of one or more models side by side."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from logitcache.evaluate import EvalConfig, evaluate

from . import common as C


@C.handle_errors
def command(
    models: Annotated[list[Path], typer.Argument(help="Model dirs (Hugging Face format) to evaluate.")],
    data: Annotated[Path, typer.Option("--data", help="Prepared data dir (WORK/data).")],
    split: Annotated[str, typer.Option("--split", help="dev or test.")] = "dev",
    blimp: Annotated[Optional[Path], typer.Option("--blimp", help="BLiMP directory (one JSONL file per paradigm).")] = None,
    blimp_max_pairs: Annotated[int, typer.Option("--blimp-max-pairs", help="At most this many pairs per paradigm (0: all).")] = 0,
    teacher: Annotated[Optional[list[Path]], typer.Option("--teacher", help="Teacher dir(s): report top-1 agreement and KL to their ensemble.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Temperature of the teacher ensemble for agreement/KL.")] = 1.0,
    max_chunks: Annotated[int, typer.Option("--max-chunks", help="Evaluate N chunks spread evenly over the split (0: all).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Chunks per forward pass.")] = 32,
    device: C.Device = "auto",
    json_out: C.JsonOut = None,
) -> None:
    """Validation CE, perplexity and bits per byte; BLiMP with --blimp; agreement with --teacher."""
    config = EvalConfig(models=tuple(models), data=data, split=split, blimp=blimp, blimp_max_pairs=blimp_max_pairs,
                        teachers=tuple(teacher or ()), temperature=temperature, max_chunks=max_chunks,
                        batch_size=batch_size, device=device)
    result = evaluate(config, progress=C.progress_hook())
    columns = ["model", "params", f"{split} CE", "ppl", "bits/byte"]
    has_teacher = bool(teacher)
    has_blimp = blimp is not None
    columns += ["top-1 agr.", "KL to teachers"] if has_teacher else []
    columns += ["BLiMP"] if has_blimp else []
    rows = []
    for m in result["models"]:
        row = [m["path"], m["params"], m["ce"], m["ppl"], m["bits_per_byte"]]
        row += [m["teacher_top1_agreement"], m["teacher_kl"]] if has_teacher else []
        row += [m["blimp"]["overall"]] if has_blimp else []
        rows.append(row)
    C.print_table(f"eval on {split}", columns, rows)
    if has_blimp:
        terms = sorted(result["models"][0]["blimp"]["terms"])
        C.print_table("BLiMP by linguistic term", ["term"] + [Path(m["path"]).name for m in result["models"]],
                      [[t] + [m["blimp"]["terms"][t] for m in result["models"]] for t in terms])
    C.write_json(json_out, result)
