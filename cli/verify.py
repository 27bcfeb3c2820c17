"""`logitcache verify CACHE`: full integrity check (exit 1 and the failing blocks on any fault)."""
from typing import Annotated

import typer

from . import common as C


@C.handle_errors
def command(
    cache: Annotated[str, typer.Argument(help="A cache written by `logitcache dump`: a folder or a URL (s3://bucket/prefix/cache.zarr).")],
    json_out: C.JsonOut = None,
    storage_option: C.StorageOption = None,
) -> None:
    """Check every block's done marker and checksum, and its raw decoded values: ids inside the
    vocabulary and ascending, probabilities finite, >= 0, and summing to no more than the code allows."""
    from logitcache.store import CacheStore, verify_cache

    C.use_storage_options(storage_option)

    C.json_to_stdout(json_out)
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
