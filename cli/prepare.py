"""`logitcache prepare`: cleaning, tokenizer, chunked token store."""
from logitcache.stage_configs import PrepareConfig

from . import common as C
from .options import config_command


@config_command(PrepareConfig)
def command(config: PrepareConfig, overwrite: C.Overwrite = False, json_out: C.JsonOut = None) -> None:
    """Clean each source, train the BPE tokenizer on train, cut every split into chunks."""
    from logitcache.configs import prepare_output
    from logitcache.data import prepare

    C.json_to_stdout(json_out)
    prepare_output(config.out, overwrite=overwrite)
    report = prepare(config, progress=C.progress_hook())
    rows = [[name, s["words"], s["tokens"], s["replaced_bytes"]] for name, s in sorted(report.sources.items())]
    C.print_table(f"sources ({config.out})", ["source", "words", "tokens", "bad bytes replaced"], rows)
    C.print_table("chunks", ["split", "chunks", "tokens"], [[k, v["chunks"], v["tokens"]] for k, v in report.splits.items()],
                  caption=f"vocab {report.vocab_size}, fingerprint {report.fingerprint[:16]}")
    C.write_json(json_out, report.to_json())
