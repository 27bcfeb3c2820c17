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


# Fields of a tokenizer model that decide the ids it produces (dropout and caches do not).
_MODEL_KEYS = ("type", "vocab", "merges", "unk_token", "byte_fallback", "continuing_subword_prefix",
               "end_of_word_suffix", "fuse_unk", "max_input_chars_per_word")


def tokenizer_identity(tokenizer: Tokenizer) -> str:
    """sha256 of what a tokenizer does, not of its file: the model (type, vocabulary, merges),
    normalizer, pre-tokenizer and the added tokens (id, content, special). Re-saving a tokenizer
    (transformers writes merges as pairs, reorders keys, adds padding settings) keeps its identity."""
    import hashlib
    import json

    spec = json.loads(tokenizer.to_str())
    model = {k: v for k, v in (spec.get("model") or {}).items() if k in _MODEL_KEYS}
    if model.get("merges"):
        model["merges"] = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
    canonical = {
        "model": model, "normalizer": spec.get("normalizer"), "pre_tokenizer": spec.get("pre_tokenizer"),
        "added_tokens": sorted((t["id"], t["content"], bool(t.get("special"))) for t in spec.get("added_tokens", [])),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


_IDENTITY_BY_DIGEST: dict[str, str] = {}


def tokenizer_file_identity(path: Path) -> str:
    """tokenizer_identity of a tokenizer.json file, memoised by the file's sha256: teachers usually ship the
    data's very file, and equal bytes are an equal tokenizer, so it is parsed once (~0.1 s at 8k merges)."""
    import hashlib

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest not in _IDENTITY_BY_DIGEST:
        _IDENTITY_BY_DIGEST[digest] = tokenizer_identity(load_tokenizer(path))
    return _IDENTITY_BY_DIGEST[digest]


def folder_tokenizer_identity(path: Path) -> str | None:
    """tokenizer_identity of a model or tokenizer folder's tokenizer (or of a tokenizer.json file); None when
    it has none. A tokenizer.json goes through tokenizer_file_identity (memoised by its bytes)."""
    path = Path(path)
    json_file = path if path.is_file() else path / "tokenizer.json"
    if json_file.is_file():
        return tokenizer_file_identity(json_file)
    tokenizer = find_tokenizer(path)
    return None if tokenizer is None else tokenizer_identity(tokenizer)


_TOKENIZER_FILES = ("vocab.json", "tokenizer.model", "spiece.model", "vocab.txt", "sentencepiece.bpe.model")


def find_tokenizer(path: Path) -> Tokenizer | None:
    """The tokenizer of a model or tokenizer folder (tokenizer.json, or anything transformers can turn
    into a fast tokenizer: vocab.json + merges.txt, sentencepiece), or a tokenizer.json file; None when
    the folder has none."""
    path = Path(path)
    if path.is_file():
        return load_tokenizer(path)
    if (path / "tokenizer.json").is_file():
        return load_tokenizer(path / "tokenizer.json")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        return None  # transformers would build an empty tokenizer from config.json alone
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:
        return None
    return tokenizer.backend_tokenizer if getattr(tokenizer, "is_fast", False) else None


# Names pretrained tokenizers give their specials, most specific first (Llama 3, Qwen, GPT-2, Llama 2, Gemma ...)
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]")
_EOS_NAMES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>", "[SEP]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


def special_ids(tokenizer: Tokenizer, folder: Path | None = None) -> dict[str, int | None]:
    """{"bos", "eos", "pad"} ids: from tokenizer_config.json beside the tokenizer when there is one,
    else by the usual names; None where the tokenizer has no such token."""
    import json

    configured: dict[str, str] = {}
    config_path = Path(folder) / "tokenizer_config.json" if folder is not None else None
    if config_path is not None and config_path.is_file():
        try:
            raw = json.loads(config_path.read_text())
        except json.JSONDecodeError:
            raise LogitcacheError(f"{config_path} is not valid JSON") from None
        for key in ("bos", "eos", "pad"):
            value = raw.get(f"{key}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                configured[key] = value
    out: dict[str, int | None] = {}
    for key, names in (("bos", _BOS_NAMES), ("eos", _EOS_NAMES), ("pad", _PAD_NAMES)):
        candidates = ([configured[key]] if key in configured else []) + list(names)
        out[key] = next((tokenizer.token_to_id(n) for n in candidates if tokenizer.token_to_id(n) is not None), None)
    return out
