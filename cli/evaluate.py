"""`logitcache eval`: metrics of one or more models side by side."""
from pathlib import Path

from logitcache.config import EvalConfig

from . import common as C
from .options import config_command


@config_command(EvalConfig)
def command(config: EvalConfig, json_out: C.JsonOut = None, storage_option: C.StorageOption = None) -> None:
    """Validation CE, perplexity and bits per byte; BLiMP with --blimp; agreement with --teacher."""
    from logitcache.evaluate import evaluate

    C.use_storage_options(storage_option)

    C.json_to_stdout(json_out)
    result = evaluate(config, progress=C.progress_hook())
    has_teacher, has_blimp = bool(config.teachers), config.blimp is not None
    # a teacher on a tokenizer of its own: agreement and KL over the positions some teacher aligns, that fraction
    has_coverage = any("teacher_positions_covered" in m for m in result["models"])
    columns = ["model", "params", f"{config.split} CE", "ppl", "bits/byte"]
    columns += ["top-1 agr.", "KL to teachers"] if has_teacher else []
    columns += ["positions covered"] if has_coverage else []
    columns += ["BLiMP strict", "BLiMP official"] if has_blimp else []
    rows = []
    for m in result["models"]:
        row = [m["path"], m["params"], m["ce"], m["ppl"], m["bits_per_byte"]]
        row += [m["teacher_top1_agreement"], m["teacher_kl"]] if has_teacher else []
        row += [m["teacher_positions_covered"]] if has_coverage else []
        row += [m["blimp"]["strict"], m["blimp"]["official"]] if has_blimp else []
        rows.append(row)
    C.print_table(f"eval on {config.split}", columns, rows)
    if has_blimp:
        categories = sorted(result["models"][0]["blimp"]["categories"])
        names = [Path(m["path"]).name for m in result["models"]]
        C.print_table("BLiMP by category (strict / official)", ["category"] + names,
                      [[c] + [f"{m['blimp']['categories'][c]['strict']:.3f} / {m['blimp']['categories'][c]['official']:.3f}"
                              for m in result["models"]] for c in categories])
    if has_coverage:
        C.print_table("teacher coverage (positions aligned, probability mapped there)", ["teacher", "positions", "mass"],
                      [[c["teacher"], c["positions"], c["mass"]] for c in result["models"][0]["teacher_coverage"]])
    C.write_json(json_out, result)
