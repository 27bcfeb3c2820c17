"""`logitcache verify CACHE|DATA_DIR`: full integrity check (exit 1 and the failing blocks or chunks on any fault)."""
from typing import Annotated

import typer

from . import common as C


@C.handle_errors
def command(
    cache: Annotated[str, typer.Argument(metavar="CACHE|DATA_DIR", help="A cache written by `logitcache dump`, or a data dir written by `logitcache prepare`: a folder or a URL (s3://bucket/prefix/cache.zarr).")],
    json_out: C.JsonOut = None,
    storage_option: C.StorageOption = None,
) -> None:
    """A cache: check every block's done marker and checksum, and its raw decoded values: ids inside the
    vocabulary and ascending, probabilities finite, >= 0, and summing to no more than the code allows.
    A data dir: check every token store chunk against its checksum, tokenizer.json against its recorded
    sha256, and the data fingerprint."""
    from logitcache.store import is_data_location

    C.use_storage_options(storage_option)
    C.json_to_stdout(json_out)
    if is_data_location(cache):
        verify_data_dir(cache, json_out)
    else:
        verify_cache_dir(cache, json_out)


def verify_cache_dir(cache: str, json_out) -> None:
    from logitcache.store import CacheStore, verify_cache

    problems = verify_cache(cache, progress=C.progress_hook())
    n_blocks = CacheStore(cache).layout.n_blocks
    C.write_json(json_out, {"path": str(cache), "ok": not problems, "n_blocks": n_blocks,
                            "bad_blocks": len(problems), "problems": problems})
    if problems:
        for line in problems:
            C.say(f"FAIL {line}")
        C.say(f"{len(problems)} bad block(s); first: {problems[0]}")
        raise typer.Exit(1)
    C.say(f"OK {cache}: every block done and intact ({n_blocks} blocks)")


def verify_data_dir(data: str, json_out) -> None:
    from logitcache.store import verify_data

    result = verify_data(data, progress=C.progress_hook())
    problems, n_chunks = result["problems"], sum(result["splits"].values())
    C.write_json(json_out, {"path": str(data), "kind": "data", "ok": not problems, "splits": result["splits"],
                            "n_chunks": n_chunks, "problems": problems, "warnings": result["warnings"]})
    for line in result["warnings"]:
        C.say(f"WARN {line}")
    if problems:
        for line in problems:
            C.say(f"FAIL {line}")
        C.say(f"{len(problems)} problem(s) in {data}; first: {problems[0]}")
        raise typer.Exit(1)
    chunks = "every chunk intact" if not result["warnings"] else "chunks without checksums (see WARN)"
    C.say(f"OK {data}: {chunks} ({n_chunks} chunks), tokenizer and fingerprint match")
