"""`logitcache bench cache-size`: cache size against top-k accuracy."""
import typer

from logitcache.config import CacheSizeConfig

from . import common as C
from .options import config_command

app = typer.Typer(help="Benchmarks that print a table and write JSON.", no_args_is_help=True)


@app.command("cache-size")
@config_command(CacheSizeConfig)
def cache_size_command(config: CacheSizeConfig, json_out: C.JsonOut = None, storage_option: C.StorageOption = None) -> None:
    """One dump per k (and per prob dtype) on the same chunks: bytes/token against mass kept, KL, top-1 agreement."""
    from logitcache.bench import cache_size, row_label

    C.json_to_stdout(json_out)
    C.use_storage_options(storage_option)
    payload = cache_size(config, progress=C.progress_hook())
    rows = [[r["targets"], row_label(r), r["prob_dtype"], r["bytes_per_token"], r["raw_bytes_per_token"], r["compression_ratio"],
             r["mass_kept"], r["kl"], r["top1_agreement"], r["dump_tokens_per_s"],
             "-" if r["student_ce"] is None else r["student_ce"]] for r in payload["rows"]]
    C.print_table("cache size vs accuracy", ["targets", "k/N", "prob dtype", "bytes/token", "raw", "ratio", "mass kept",
                                             "KL", "top-1", "dump tok/s", "student CE"], rows,
                  caption=f"written to {config.out}/cache_size.json, .md, .png")
    if payload.get("coverage"):  # teachers with a tokenizer of their own
        C.print_table("coverage (teachers with a tokenizer of their own)", ["teacher", "positions aligned",
                                                                            "next tokens mapped"],
                      [[c["teacher"], c["positions"], c["next_tokens_mapped"]] for c in payload["coverage"]])
    if payload.get("equal_bytes"):  # mass-target rows beside a top-32 row, with students
        from logitcache.bench import equal_bytes_lines

        C.say(equal_bytes_lines(payload["equal_bytes"])[0].replace("**", ""))
    C.write_json(json_out, payload)
