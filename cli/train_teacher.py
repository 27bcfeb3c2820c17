"""`logitcache train-teacher`: one GPT-2 or LLaMA teacher, saved in Hugging Face format."""
from logitcache.config import TeacherConfig

from . import common as C
from .options import config_command


@config_command(TeacherConfig)
def command(config: TeacherConfig, resume: C.Resume = False, overwrite: C.Overwrite = False) -> None:
    """Train a teacher with AdamW, warmup + cosine, validation at epoch ends; the best is kept."""
    from logitcache.train_teacher import train_teacher

    report = train_teacher(config, resume=resume, overwrite=overwrite, progress=C.progress_hook())
    C.print_table(f"teacher {config.out}", ["steps", "best val CE", "at step", "tokens/s", "seconds"],
                  [[report.steps, report.best_val_ce, report.best_step, report.tokens_per_s, report.seconds]])
