"""`logitcache inspect CACHE`: what a cache holds."""
from pathlib import Path
from typing import Annotated

import typer

from . import common as C


@C.handle_errors
def command(
    cache: Annotated[str, typer.Argument(help="A cache written by `logitcache dump`: a folder or a URL (s3://bucket/prefix/cache.zarr).")],
    json_out: C.JsonOut = None,
    storage_option: C.StorageOption = None,
) -> None:
    """Teachers, k, T, combine, rows, blocks done, bytes per token (on disk and raw), decode recipe."""
    from logitcache.store import cache_summary

    C.use_storage_options(storage_option)

    C.json_to_stdout(json_out)
    s = cache_summary(cache)
    a = s["attrs"]
    teachers = "; ".join(f"{t['arch']} {t['params'] / 1e6:.1f}M ({Path(t['path']).name})" for t in a["teachers"])
    rows = [
        ["teachers", teachers], ["targets", a.get("targets", "topk")], ["k (width)", a["k"]],
        ["temperature", a["temperature"]], ["combine", a["combine"]], ["split", a["split"]],
        ["rows x positions", f"{a['n_rows']} x {a['seq_len']}"], ["vocabulary", a["vocab_size"]],
        ["blocks done", f"{s['blocks_done']} / {s['n_blocks']} (block = {a['block_rows']} rows)"],
        ["prob dtype", a["prob_dtype"]], ["bytes/token on disk (targets)", s["bytes_per_token"]],
        ["bytes/token raw", s["raw_bytes_per_token"]], ["compression ratio", s["compression_ratio"]],
        ["full fp32 logits bytes/token", s["full_logit_bytes_per_token"]],
        ["bytes on disk (all arrays)", s["bytes_on_disk"]], ["data fingerprint", a["data_fingerprint"][:16]],
    ]
    for entry in a.get("coverage") or []:  # teachers with a tokenizer of their own (over the chunks' text)
        rows.append([f"coverage {entry['teacher']}", f"{entry['positions']:.1%} of positions aligned, "
                     f"{entry['next_tokens_mapped']:.1%} of next tokens mapped ({entry['chunks']} chunks)"])
    rows += [[f"decode {k}", v] for k, v in a["encodings"].items()]
    C.print_table(f"cache {cache}", ["field", "value"], rows)
    C.write_json(json_out, s)
