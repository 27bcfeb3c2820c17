"""Byte-level BPE tokenizer trained on the train split only (special tokens <pad>=0, <s>=1, </s>=2)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .errors import LogitcacheError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == token_id
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise LogitcacheError(f"no tokenizer at {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exception on bad JSON
        raise LogitcacheError(f"{path} is not a tokenizers JSON file ({exc})") from None


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of `text`, encoded line by line (parallel in Rust); decoding them gives `text` back."""
    lines = text.splitlines(keepends=True)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch_fast(lines, add_special_tokens=False) if hasattr(
        tokenizer, "encode_batch_fast"
    ) else tokenizer.encode_batch(lines, add_special_tokens=False):
        ids.extend(encoding.ids)
    return ids
