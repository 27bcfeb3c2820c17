"""`logitcache export SRC DST`: a model folder ready for the BabyLM pipelines and the Hub."""
from logitcache.config import ExportConfig

from . import common as C
from .options import config_command


@config_command(ExportConfig)
def command(config: ExportConfig, overwrite: C.Overwrite = False) -> None:
    """Safetensors weights, config, a fast tokenizer that prepends BOS, and a model card; no optimizer
    state, no pickle. Loads with plain transformers (no trust_remote_code)."""
    from logitcache.export import export

    dst = export(config, overwrite=overwrite)
    C.print_table(f"exported {config.src}", ["file", "bytes"],
                  [[p.name, p.stat().st_size] for p in sorted(dst.iterdir())])
