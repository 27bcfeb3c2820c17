"""`logitcache export-targets CACHE OUT --format axolotl`: a cache's targets as another tool's KD dataset."""
from logitcache.config import ExportTargetsConfig

from . import common as C
from .options import config_command


@config_command(ExportTargetsConfig)
def command(config: ExportTargetsConfig, overwrite: C.Overwrite = False) -> None:
    """A Hugging Face `datasets` folder (load_from_disk) with the columns Axolotl's KD integration reads; the
    Axolotl settings that match it (kd_temperature, the dataset's temperature) in OUT/logitcache_export.json.
    Top-k caches only: the format has no tail bucket (its KL renormalises over the kept ids), no importance
    weights and no ragged rows; positions no teacher aligned (teacher_count 0) are masked."""
    from logitcache.export_targets import export_targets

    summary = export_targets(config, overwrite=overwrite, progress=C.progress_hook())
    C.print_table(f"exported {summary['rows']} rows of {config.cache} ({config.format})", ["setting", "value"],
                  [[key, summary[key]] for key in ("temperature", "k", "seq_len", "positions_masked",
                                                   "positions_with_a_zero_slot")])
