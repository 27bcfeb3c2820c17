"""`logitcache train-student`: distillation from the cache, no teacher in memory."""
from logitcache.config import StudentConfig

from . import common as C
from .options import config_command


@config_command(StudentConfig)
def command(config: StudentConfig, resume: C.Resume = False, overwrite: C.Overwrite = False,
            storage_option: C.StorageOption = None) -> None:
    """Train the student on the cache's chunks with alpha*CE + (1-alpha)*T^2*KL over the cached targets."""
    from logitcache.train_student import train_student

    C.use_storage_options(storage_option)
    report = train_student(config, resume=resume, overwrite=overwrite, progress=C.progress_hook())
    last = next((r for r in reversed(report.history) if "ce" in r), {})
    C.print_table(f"student {config.out}", ["steps", "best val CE", "at step", "last CE", "last KL", "tokens/s",
                                            "skipped blocks", "skipped steps"],
                  [[report.steps, report.best_val_ce, report.best_step, last.get("ce", float("nan")),
                    last.get("kl", float("nan")), report.tokens_per_s, len(report.skipped_blocks), report.skipped_steps]])
