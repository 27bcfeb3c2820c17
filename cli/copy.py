"""`logitcache copy SRC DST`: a cache between local disk and object storage, checked and resumable."""
from typing import Annotated

import typer

from . import common as C


@C.handle_errors
def command(
    src: Annotated[str, typer.Argument(help="The cache (or prepared data dir) to copy: a folder or a URL "
                                            "(s3://bucket/prefix/cache.zarr).")],
    dst: Annotated[str, typer.Argument(help="Where to put it: a folder or a URL. An interrupted copy resumes; "
                                            "a different cache there is refused.")],
    workers: Annotated[int, typer.Option("--workers", help="Blocks in flight at once.")] = 8,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Copy the done blocks of an unfinished "
                                                   "cache (refused without this); the copy is as incomplete.")] = False,
    json_out: C.JsonOut = None,
    storage_option: C.StorageOption = None,
) -> None:
    """Copy a cache block by block, checking every block's checksum (exit 1 if a source block is corrupt),
    or a prepared data dir file by file once it passes verify (exit 1, nothing copied, if it does not)."""
    from logitcache.store.copy import copy_cache, copy_data_dir, is_data_dir

    C.json_to_stdout(json_out)
    C.use_storage_options(storage_option)
    if is_data_dir(src):
        report = copy_data_dir(src, dst, progress=C.progress_hook(), workers=workers)
        if report.problems:
            for line in report.problems:
                C.say(f"FAIL {line}")
            C.say(f"{report.src} fails verify: nothing copied")
            raise typer.Exit(1)
        C.print_table(f"copy {report.src} -> {report.dst}", ["files", "MB"], [[report.blocks_copied, report.bytes_stored / 1e6]])
        C.write_json(json_out, vars(report))
        return
    report = copy_cache(src, dst, progress=C.progress_hook(), workers=workers, allow_incomplete=allow_incomplete)
    C.print_table(f"copy {report.src} -> {report.dst}", ["blocks", "copied", "already there", "not done in source",
                                                         "corrupt", "MB (stored, decompressed)"],
                  [[report.n_blocks, report.blocks_copied, report.blocks_skipped, report.blocks_missing,
                    len(report.problems), report.bytes_stored / 1e6]])
    C.write_json(json_out, vars(report))
    if report.blocks_missing:
        C.say(f"incomplete: {report.blocks_missing} of {report.n_blocks} blocks are not done in the source, so the "
              f"copy {report.dst} lacks them too")
    if report.problems:
        for line in report.problems:
            C.say(f"FAIL {line}")
        C.say(f"{len(report.problems)} corrupt block(s) in the source were not copied")
        raise typer.Exit(1)
