"""`train-teacher`: one GPT-2 or LLaMA teacher trained with the shared loop, saved in HF format."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .configs import to_dict
from .data import PreparedData, load_data
from .errors import LogitcacheError
from .models import build_model, get_preset
from .progress import NULL_PROGRESS, ProgressHook
from .stage_configs import TeacherConfig  # noqa: F401  (re-exported)
from .train import CEObjective, TokenRows, TrainReport, fit

log = logging.getLogger(__name__)


def tokenizer_saver(data: PreparedData):
    """Writes the data's tokenizer beside a saved model as a fast tokenizer with BOS/EOS/PAD and
    model_input_names, so `AutoTokenizer.from_pretrained(model_dir)` and `model.generate(**tok(text,
    return_tensors="pt"))` work in plain transformers (4.x and 5.x)."""

    def save(folder: Path) -> None:
        from .tokenizer import load_tokenizer

        shutil.copy2(data.tokenizer_path, Path(folder) / "tokenizer.json")
        tokenizer = load_tokenizer(data.tokenizer_path)
        specials = data.special_ids
        token = {k: (tokenizer.id_to_token(v) if v is not None else None) for k, v in specials.items()}
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token["bos"], "eos_token": token["eos"],
            "pad_token": token["pad"] or token["eos"], "model_max_length": data.seq_len,
            "model_input_names": ["input_ids", "attention_mask"], "clean_up_tokenization_spaces": False,
        }, indent=2))

    return save


def check_vocab(data: PreparedData, vocab_size: int, what: str) -> None:
    if vocab_size and vocab_size != data.vocab_size:
        raise LogitcacheError(f"{what} has vocabulary {vocab_size} but the data's tokenizer has {data.vocab_size}")


def train_teacher(config: TeacherConfig, resume: bool = False, progress: ProgressHook = NULL_PROGRESS) -> TrainReport:
    data = load_data(config.data)
    check_vocab(data, config.vocab_size, f"preset '{config.preset}'")
    model = build_model(get_preset(config.preset), data.vocab_size, seed=config.train.seed, specials=data.special_ids)
    run_config = to_dict(config) | {"data_fingerprint": data.fingerprint, "stage": "train-teacher"}
    source = TokenRows(data.store.split("train"), seed=config.train.seed)
    val_rows = data.validation_rows("dev", config.train.val_chunks)
    return fit(model, source, CEObjective(), config.train, config.out, val_rows, run_config, resume=resume,
               progress=progress, save_extra=tokenizer_saver(data))
