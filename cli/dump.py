"""`logitcache dump`: the teacher-inference job that writes the compressed cache."""
from logitcache.config import DumpConfig

from . import common as C
from .options import config_command


@config_command(DumpConfig)
def command(config: DumpConfig, resume: C.Resume = False, overwrite: C.Overwrite = False,
            storage_option: C.StorageOption = None) -> None:
    """Run the teachers once over every chunk; write top-k ensemble targets to a Zarr cache.

    Under `torchrun --nproc-per-node N` each rank writes a disjoint set of blocks; rank 0 alone
    prepares the output and prints the summary once every rank is done. With `--engine ray` this
    process is the driver of an autoscaling pool of Ray workers (--ray-address, --workers MIN:MAX),
    each committing its own blocks; its bar counts blocks and shows the workers alive.
    """
    from logitcache.dump import dump

    C.use_storage_options(storage_option)

    report = dump(config, resume=resume, overwrite=overwrite, progress=C.progress_hook())
    if report.rank == 0:
        s = report.summary
        caption = f"{report.world} rank(s); written and skipped counts are summed over ranks"
        if getattr(report, "engine", "local") == "ray":
            kinds = ", ".join(f"{w['device']} {w['precision']}" for w in report.writers)
            caption = (f"ray: {len(report.worker_pids)} worker process(es) committed blocks, {report.restarts} "
                       f"restart(s); written by {kinds or 'no worker this run'}")
        C.print_table(f"cache {config.out}", ["rows", "blocks written", "blocks already done", "tokens/s", "bytes/token",
                                              "blocks done"],
                      [[report.n_rows, report.blocks_written, report.blocks_skipped, report.tokens_per_s,
                        s["bytes_per_token"], f"{s['blocks_done']}/{s['n_blocks']}"]],
                      caption=caption)
        counted = getattr(report, "coverage_blocks", report.blocks_written)
        short = (f"; this run's counts cover {counted} of its {report.blocks_written} blocks (a block retried after "
                 "its commit kept them in the worker that died)") if counted < report.blocks_written else ""
        coverage_table(s["attrs"], getattr(report, "coverage", []), short)


def coverage_table(attrs: dict, measured: list, note: str = "") -> None:
    """Per teacher with a tokenizer of its own: positions aligned and next tokens mapped (the attributes:
    the chunks' text), and what this run measured on the blocks it computed (positions, probability mapped)."""
    coverage = attrs.get("coverage") or []
    if not coverage:
        return
    own = [i for i, t in enumerate(attrs["teachers"]) if t.get("tokenizer") == "own"]
    rows, checks = [], []
    for entry, index in zip(coverage, own):
        run = measured[index] if index < len(measured) else {}
        rows.append([entry["teacher"], entry["positions"], entry["next_tokens_mapped"], run.get("positions", "-"),
                     run.get("mass", "-")])
        sample = entry.get("self_check") or {}
        checks.append([entry["teacher"], sample.get("violations", "-"), sample.get("checked", "-"),
                       run.get("violations", "-"), run.get("checked", "-")])
    C.print_table("coverage (teachers with a tokenizer of their own)",
                  ["teacher", "positions aligned", "next tokens mapped", "positions (this run)", "mass mapped (this run)"],
                  rows, caption=f"attributes over {coverage[0]['chunks']} chunks' text; this run: its blocks, "
                                "mass = the teacher's probability at aligned positions that has a student id" + note)
    C.print_table("alignment self-check", ["teacher", "violations", "positions checked", "violations (this run)",
                                           "checked (this run)"], checks,
                  caption="at each aligned position: the teacher's next token spells the text, and the map sends equal "
                          "bytes to the student's next token; any violation refuses the dump")
