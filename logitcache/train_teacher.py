"""`train-teacher`: one GPT-2 or LLaMA teacher trained with the shared loop, saved in HF format."""
from __future__ import annotations

import logging

from ._settings import to_dict
from .config import TeacherConfig  # noqa: F401  (re-exported)
from .data.prepared import PreparedData, load_data, tokenizer_saver
from .errors import LogitcacheError
from .files import check_output, prepare_output
from .progress import NULL_PROGRESS, ProgressHook
from .teachers.models import build_model, get_preset
from .training.loop import CEObjective, TokenRows, TrainReport, check_parallel, fit

log = logging.getLogger(__name__)


def check_vocab(data: PreparedData, vocab_size: int, what: str) -> None:
    if vocab_size and vocab_size != data.vocab_size:
        raise LogitcacheError(f"{what} has vocabulary {vocab_size} but the data's tokenizer has {data.vocab_size}")


def train_teacher(config: TeacherConfig, resume: bool = False, overwrite: bool = False,
                  progress: ProgressHook = NULL_PROGRESS) -> TrainReport:
    """Train one teacher into `config.out`; an `out` holding something is refused unless `resume` (continue
    its checkpoint) or `overwrite` (replaced once the data and the preset have been checked)."""
    check_output(config.out, resume, overwrite)
    check_parallel(config.train)
    data = load_data(config.data)
    check_vocab(data, config.vocab_size, f"preset '{config.preset}'")
    model = build_model(get_preset(config.preset), data.vocab_size, seed=config.train.seed, specials=data.special_ids)
    run_config = to_dict(config) | {"data_fingerprint": data.fingerprint, "stage": "train-teacher"}
    source = TokenRows(data.store.split("train"), seed=config.train.seed)
    val_rows = data.validation_rows("dev", config.train.val_chunks)
    prepare_output(config.out, resume, overwrite)
    return fit(model, source, CEObjective(), config.train, config.out, val_rows, run_config, resume=resume,
               progress=progress, save_extra=tokenizer_saver(data))
