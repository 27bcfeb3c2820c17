"""`logitcache prepare`: cleaning, tokenizer, chunked token store."""
from logitcache.config import PrepareConfig

from . import common as C
from .options import config_command


@config_command(PrepareConfig)
def command(config: PrepareConfig, overwrite: C.Overwrite = False, json_out: C.JsonOut = None) -> None:
    """Clean each source, train the BPE tokenizer on train, cut every split into chunks."""
    from logitcache.prepare import prepare

    C.json_to_stdout(json_out)
    report = prepare(config, overwrite=overwrite, progress=C.progress_hook())
    rows = [[name, s["words"], s["tokens"], s["replaced_bytes"], _removed(name, s["cleaning"], report.warnings)]
            for name, s in sorted(report.sources.items())]
    caption = (f"! {len(report.warnings)} cleaner step(s) removed more than expected: the warnings above, "
               "and 'warnings' in prepare_report.json" if report.warnings else None)
    C.print_table(f"sources ({config.out})", ["source", "words", "tokens", "bad bytes replaced",
                                              "cleaned away (chars, lines)"], rows, caption=caption)
    C.print_table("chunks", ["split", "chunks", "tokens"], [[k, v["chunks"], v["tokens"]] for k, v in report.splits.items()],
                  caption=f"vocab {report.vocab_size}, fingerprint {report.fingerprint[:16]}")
    C.write_json(json_out, report.to_json())


def _removed(source: str, cleaning: dict, warnings: list[str]) -> str:
    """What the source's cleaner removed, as shares of its characters and non-blank lines ('!': a warning)."""
    steps = cleaning.get("removed", {}).values()
    chars = sum(e["chars"] for e in steps) / max(cleaning.get("chars", 0), 1)
    lines = sum(e.get("lines", 0) for e in steps) / max(cleaning.get("lines", 0), 1)
    flag = " !" if any(w.startswith(f"source '{source}':") for w in warnings) else ""
    return f"{chars:.1%}, {lines:.1%}{flag}"
