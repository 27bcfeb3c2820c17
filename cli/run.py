"""`logitcache run`: the whole pipeline from one config, ending in WORK/report.md."""
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common as C


@C.handle_errors
def command(
    out: Annotated[Optional[Path], typer.Option("--out", help="Work directory: every stage's output and the report; default "
                                                "work/<config name> (work/demo, work/demo-mixed, ...).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config, or a shipped one by name (demo, demo-mixed, babylm-paper); default: demo, the embedded demo.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Raw text for the run (sets data.raw_dir): the BabyLM folder "
                                                  "(babylm_10M/, babylm_dev/, babylm_test/) or any <source>.<split> layout.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one config key: KEY=VALUE with a dotted key "
                                                       "(student.train.max_steps=20, dump.top_k=64, teachers.gpt2.preset=gpt2-tiny); "
                                                       "repeatable. VALUE is read as TOML, else as a string.")] = None,
    cache: Annotated[Optional[str], typer.Option("--cache", help="Where the cache goes (sets dump.cache): a folder or a URL "
                                                   "(s3://bucket/prefix/cache.zarr); default WORK/cache.zarr.")] = None,
    storage_option: C.StorageOption = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Redo this stage even if complete, and every later stage that reads its output (corpus, prepare, teacher or teacher:NAME, dump, student, eval); repeatable. --force dump also replaces a cache this WORK did not make.")] = None,
) -> None:
    """corpus -> prepare -> teachers -> dump -> students -> eval -> report; complete stages are skipped."""
    from logitcache.run import default_work_dir, load_run_config, run_pipeline

    C.use_storage_options(storage_option)
    overrides = tuple(set_ or ()) + ((f'data.raw_dir="{Path(data).resolve()}"',) if data is not None else ())
    overrides += (f"dump.cache={json.dumps(cache)}",) if cache is not None else ()
    run_config = load_run_config(config, overrides)
    out = default_work_dir(config) if out is None else out
    report = run_pipeline(run_config, out, tuple(force or ()), progress=C.progress_hook())
    rows = [[f"teacher {t['name']}", t["params"], t["dev_ce"], t["test_ce"]] for t in report["teachers"]]
    rows += [[f"student {k}", s["params"], s["dev_ce"], s["test_ce"]] for k, s in report["students"].items()]
    C.print_table(f"report: {out}/report.md", ["model", "params", "dev CE", "test CE"], rows,
                  caption=f"cache {report['cache']['bytes_per_token']:.2f} bytes/token; total {sum(report['stages'].values()):.0f} s")
