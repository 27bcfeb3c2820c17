"""Tokenizers: the byte-level BPE trained on the train split only (special tokens <pad>=0, <s>=1, </s>=2),
loading a folder's tokenizer (tokenizer.json, or files transformers converts), its special ids, and the
behavioural identity that decides whether a model's ids mean what the data's ids mean."""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import LogitcacheError

log = logging.getLogger(__name__)

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


def train_metaspace_bpe(texts: Iterable[str], merges_vocab_size: int, special_tokens=("<unk>", "<s>", "</s>"),
                        llama2_style: bool = True, template: bool = True) -> Tokenizer:
    """A sentencepiece-style BPE (a Llama-2 tokenizer's kind): ▁ for spaces, trained to `merges_vocab_size`
    ids, then 256 <0xNN> byte-fallback ids for characters it never saw. `llama2_style`: Llama-2's
    Prepend/Replace normalizer, Replace/ByteFallback/Fuse/Strip decoder and, with `template`, the `<s> $A`
    template (the second special must be <s>); else the Metaspace pre-tokenizer and decoder, no template."""
    import json

    from tokenizers import normalizers, processors

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=merges_vocab_size, show_progress=False,
                                                             special_tokens=list(special_tokens)))
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    if not llama2_style:
        tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
        return tokenizer
    tokenizer.pre_tokenizer = None
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    if template:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizers JSON file, with any truncation or padding it ships turned off: documents are encoded
    whole and unpadded here, and a file's `max_length` would cut every document short."""
    path = Path(path)
    if not path.is_file():
        raise LogitcacheError(f"no tokenizer at {path}")
    return tokenizer_from_bytes(path.read_bytes(), path)


def tokenizer_from_bytes(raw: bytes, where: Path | str) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:  # the tokenizers library raises plain Exception on bad JSON
        raise LogitcacheError(f"{where} is not a tokenizers JSON file ({exc})") from None
    return _whole_documents(tokenizer)


def _whole_documents(tokenizer: Tokenizer) -> Tokenizer:
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        log.info("tokenizer: its truncation %s and padding %s are turned off", tokenizer.truncation, tokenizer.padding)
        tokenizer.no_truncation()
        tokenizer.no_padding()
    return tokenizer


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of `text`, encoded line by line (parallel in Rust); decoding them gives `text` back."""
    lines = text.splitlines(keepends=True)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch_fast(lines, add_special_tokens=False) if hasattr(
        tokenizer, "encode_batch_fast"
    ) else tokenizer.encode_batch(lines, add_special_tokens=False):
        ids.extend(encoding.ids)
    return ids


# Fields of a tokenizer's JSON that cannot change the ids `encode` gives: the format's version and the
# decoder. Every other field is part of the identity, a field unknown here too.
_NOT_ENCODING = ("version", "decoder")
_PROBE_A, _PROBE_B = 2**32 - 1, 2**32 - 2  # ids no vocabulary hands out: stand-ins for a sequence's own ids


def _template(tokenizer: Tokenizer):
    """What the post-processor puts around one sequence and around a pair, as ids with "A" and "B" for the
    sequences' own ids: no post-processor, a template that adds nothing (transformers writes one on save) and
    GPT-2's offsets-only ByteLevel are the same. Any other result is kept as the processor's JSON."""
    if tokenizer.post_processor is None:
        return {"single": ["A", "A"], "pair": ["A", "A", "B", "B"]}
    probe = Tokenizer(models.WordLevel({"a": _PROBE_A, "b": _PROBE_B}, unk_token=None))
    probe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    probe.post_processor = tokenizer.post_processor
    a, b = probe.encode("a a", add_special_tokens=False), probe.encode("b b", add_special_tokens=False)
    named = {_PROBE_A: "A", _PROBE_B: "B"}
    try:
        single, pair = probe.post_process(a), probe.post_process(a, b)
    except Exception:  # a processor that cannot run on the probe: compared as written
        return json.loads(tokenizer.to_str()).get("post_processor")
    return {"single": [named.get(i, i) for i in single.ids], "pair": [named.get(i, i) for i in pair.ids]}


def identity_parts(tokenizer: Tokenizer) -> dict[str, str]:
    """sha256 of each part of a tokenizer that decides the ids `encode` gives: the model (type, vocabulary,
    merges and options such as BPE's ignore_merges, byte_fallback, dropout), normalizer, pre-tokenizer,
    what the post-processor adds, the added tokens with all their flags (lstrip, rstrip, single_word,
    normalized, special), truncation, padding and encode_special_tokens (a setting the JSON does not hold)."""
    spec = json.loads(tokenizer.to_str())
    model = dict(spec.get("model") or {})
    if model.get("merges"):
        model["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]  # json: lists
    parts = {key: value for key, value in spec.items() if key not in _NOT_ENCODING}
    parts |= {"model": model, "post_processor": _template(tokenizer),
              "added_tokens": sorted(spec.get("added_tokens") or [], key=lambda t: t["id"]),
              "encode_special_tokens": bool(getattr(tokenizer, "encode_special_tokens", False))}
    return {key: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest() for key, value in parts.items()}


def _combined(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def tokenizer_identity(tokenizer: Tokenizer) -> str:
    """sha256 of what a tokenizer does, not of its file (identity_parts): two tokenizers with equal
    identities give the same ids for every text. Re-saving a tokenizer (transformers writes merges as
    pairs, reorders keys, adds an empty template) keeps its identity."""
    return _combined(identity_parts(tokenizer))


_PARTS_BY_DIGEST: dict[str, dict[str, str]] = {}


def file_identity_parts(path: Path) -> dict[str, str]:
    """identity_parts of a tokenizer.json file, memoised by the sha256 of the very bytes parsed: teachers
    usually ship the data's file, and equal bytes are an equal tokenizer, so it is parsed once (~0.1 s at
    8k merges). load_tokenizer's changes (truncation and padding off) are a function of the bytes too."""
    raw = Path(path).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest not in _PARTS_BY_DIGEST:
        _PARTS_BY_DIGEST[digest] = identity_parts(tokenizer_from_bytes(raw, path))
    return _PARTS_BY_DIGEST[digest]


def tokenizer_file_identity(path: Path) -> str:
    """tokenizer_identity of a tokenizer.json file as load_tokenizer reads it (memoised by its bytes)."""
    return _combined(file_identity_parts(path))


def folder_identity_parts(path: Path) -> dict[str, str] | None:
    """identity_parts of a model or tokenizer folder's tokenizer (or of a tokenizer.json file); None when it
    has none. A tokenizer.json goes through file_identity_parts (memoised by its bytes)."""
    path = Path(path)
    json_file = path if path.is_file() else path / "tokenizer.json"
    if json_file.is_file():
        return file_identity_parts(json_file)
    tokenizer = find_tokenizer(path)
    return None if tokenizer is None else identity_parts(tokenizer)


def folder_tokenizer_identity(path: Path) -> str | None:
    """tokenizer_identity of a model or tokenizer folder's tokenizer (or of a tokenizer.json file); None when
    it has none."""
    parts = folder_identity_parts(path)
    return None if parts is None else _combined(parts)


def check_model_tokenizer(folder: Path, vocab_size: int, data, what: str) -> str | None:
    """Refuse a model whose tokenizer does something other than the data's (compared by behaviour, not by
    file bytes; the message names the parts that differ) or whose vocabulary is smaller than the data's;
    a folder without a tokenizer is accepted on its vocabulary size alone, with a warning. Returns the
    folder tokenizer's identity (None without one). `data` is a PreparedData."""
    parts = folder_identity_parts(folder)
    if parts is None:
        log.warning("%s has no tokenizer: only its vocabulary size (%d, the data's %d) is checked, not that it "
                    "splits text the way the data's tokenizer did", what, vocab_size, data.vocab_size)
    else:
        ours = file_identity_parts(data.tokenizer_path)
        differ = sorted(key for key in ours.keys() | parts.keys() if ours.get(key) != parts.get(key))
        if differ:
            raise LogitcacheError(f"{what} has a different tokenizer than the data in {data.path} "
                                  f"(they differ in: {', '.join(differ)})")
    if vocab_size < data.vocab_size:
        raise LogitcacheError(f"{what} has vocabulary {vocab_size}, smaller than the data's tokenizer "
                              f"({data.vocab_size})")
    return None if parts is None else _combined(parts)


# --- the bytes each token decodes to (bits/byte, cross-tokenizer alignment) ------------------------------

def _byte_level_chars() -> dict[str, int]:
    """The byte-level alphabet (GPT-2's bytes_to_unicode) inverted: mapped char -> the byte it stands for."""
    kept = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    moved = [b for b in range(256) if b not in kept]
    return {chr(b): b for b in kept} | {chr(256 + i): b for i, b in enumerate(moved)}


_BYTE_LEVEL = _byte_level_chars()
_BYTE_LEVEL_TRANSLATION = {ord(c): b for c, b in _BYTE_LEVEL.items() if ord(c) != b}
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def spec_steps(spec: dict | None, key: str) -> list[dict]:
    """The components of a tokenizer.json normalizer / pre-tokenizer / decoder, Sequences flattened."""
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [step for part in spec.get(key, []) for step in spec_steps(part, key)]
    return [spec]


def decoded_bytes(token: str, decoder: list[dict]) -> bytes:
    """The bytes a vocabulary token decodes to in the middle of a text, step by step through the decoder."""
    text = token
    for step in decoder:
        kind = step["type"]
        if kind == "ByteLevel":  # each char is one byte
            return b"".join(bytes([_BYTE_LEVEL[c]]) if c in _BYTE_LEVEL else c.encode() for c in text)
        if kind == "ByteFallback" and (match := _BYTE_TOKEN.fullmatch(text)):
            return bytes([int(match[1], 16)])
        if kind == "Replace" and "String" in step["pattern"]:
            text = text.replace(step["pattern"]["String"], step["content"])
        elif kind == "Metaspace":
            text = text.replace(step["replacement"], " ")
        elif kind == "Strip" and step.get("stop", 0) == 0:
            pass  # strips the start of the whole text: the prefix-space rule (ByteCounts.lead_space)
        elif kind not in ("ByteFallback", "Fuse"):
            raise LogitcacheError(f"the tokenizer's decoder step {json.dumps(step)} is not one logitcache "
                                  "decodes tokens to bytes for (ByteLevel, Metaspace, ByteFallback, Fuse, Replace, Strip)")
    return text.encode()


def adds_prefix_space(spec: dict) -> bool:
    """Whether encoding puts a space (▁) in front of a text that the text does not have."""
    normalizer = spec_steps(spec.get("normalizer"), "normalizers")
    pre = spec_steps(spec.get("pre_tokenizer"), "pretokenizers")
    return (any(s["type"] == "Prepend" for s in normalizer)
            or any(s["type"] == "Metaspace" and (s.get("prepend_scheme", "always") in ("first", "always")
                                                  if "prepend_scheme" in s else s.get("add_prefix_space", True))
                   for s in pre)
            or any(s["type"] == "ByteLevel" and s.get("add_prefix_space") for s in pre))


def token_byte_table(tokenizer: Tokenizer, spec: dict | None = None) -> list[bytes | None]:
    """Per id (0..V-1, added tokens included): the bytes the token decodes to in the middle of a text
    (decoded_bytes: byte-level through the byte decoder, Metaspace's ▁ as a space, a byte-fallback <0xNN>
    as that byte); None for special tokens (they stand for no text) and ids the vocabulary skips. An added
    token that is not special stands for its own content. `spec`: json.loads(tokenizer.to_str()) where the
    caller has it (~0.7 s at 128k ids)."""
    spec = json.loads(tokenizer.to_str()) if spec is None else spec
    decoder = spec_steps(spec.get("decoder"), "decoders")
    if not decoder:
        raise LogitcacheError("the tokenizer has no decoder, so the bytes its tokens stand for are unknown")
    table: list[bytes | None] = [None] * tokenizer.get_vocab_size(with_added_tokens=True)
    added = tokenizer.get_added_tokens_decoder()
    byte_level = decoder[0]["type"] == "ByteLevel"
    for token, token_id in tokenizer.get_vocab(with_added_tokens=True).items():
        if token_id >= len(table):
            table.extend([None] * (token_id + 1 - len(table)))
        if token_id in added:
            table[token_id] = None if added[token_id].special else added[token_id].content.encode()
        elif byte_level:  # each char one byte: the alphabet's chars as Latin-1 code points (C speed at 128k ids)
            try:
                table[token_id] = token.translate(_BYTE_LEVEL_TRANSLATION).encode("latin-1")
            except UnicodeEncodeError:  # a char outside the alphabet: as decoded_bytes spells it
                table[token_id] = decoded_bytes(token, decoder)
        else:
            table[token_id] = decoded_bytes(token, decoder)
    return table


def has_own_tokenizer(folder: Path, data) -> bool:
    """Whether a model folder holds a tokenizer that does something other than the data's (`data` a
    PreparedData; compared by behaviour, identity_parts); False for a folder without a tokenizer."""
    parts = folder_identity_parts(folder)
    return parts is not None and parts != file_identity_parts(data.tokenizer_path)


_SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_TOKENIZER_FILES = ("vocab.json", *_SENTENCEPIECE_FILES, "vocab.txt")
_SENTENCEPIECE_PACKAGES = (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def find_tokenizer(path: Path) -> Tokenizer | None:
    """The tokenizer of a model or tokenizer folder (tokenizer.json, or anything transformers can turn
    into a fast tokenizer: vocab.json + merges.txt, a sentencepiece model, vocab.txt), or a tokenizer.json
    file; None when the folder has no tokenizer file. Tokenizer files that do not load are an error naming
    them (and the package a sentencepiece model needs)."""
    path = Path(path)
    if path.is_file():
        return load_tokenizer(path)
    if (path / "tokenizer.json").is_file():
        return load_tokenizer(path / "tokenizer.json")
    present = [path / name for name in _TOKENIZER_FILES if (path / name).is_file()]
    if not present:
        return None  # transformers would build an empty tokenizer from config.json alone
    where = ", ".join(map(str, present))
    if any(p.name in _SENTENCEPIECE_FILES for p in present):
        missing = [package for package, module in _SENTENCEPIECE_PACKAGES if not _importable(module)]
        if missing:
            raise LogitcacheError(f"{where}: a sentencepiece model needs the {' and '.join(missing)} package "
                                  f"(pip install {' '.join(missing)})")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises anything from OSError to TypeError on a broken file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LogitcacheError(f"{where}: not a tokenizer transformers can load ({reason})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise LogitcacheError(f"{where}: transformers loads it only as a slow {type(tokenizer).__name__}, which "
                              "cannot be compared or used here (save it as a fast tokenizer.json)")
    return _whole_documents(tokenizer.backend_tokenizer)


# Names pretrained tokenizers give their specials, most specific first (Llama 3, Qwen, GPT-2, Llama 2, Gemma ...)
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]")
_EOS_NAMES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>", "[SEP]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


def special_ids(tokenizer: Tokenizer, folder: Path | None = None) -> dict[str, int | None]:
    """{"bos", "eos", "pad"} ids: from tokenizer_config.json beside the tokenizer when there is one (an
    explicit null means the tokenizer has no such token, as Qwen's `bos_token: null`), else by the usual
    names; None where the tokenizer has no such token."""
    configured: dict[str, str | None] = {}
    config_path = Path(folder) / "tokenizer_config.json" if folder is not None else None
    if config_path is not None and config_path.is_file():
        try:
            raw = json.loads(config_path.read_text())
        except json.JSONDecodeError:
            raise LogitcacheError(f"{config_path} is not valid JSON") from None
        for key in ("bos", "eos", "pad"):
            value = raw.get(f"{key}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) or (value is None and f"{key}_token" in raw):
                configured[key] = value
    out: dict[str, int | None] = {}
    for key, names in (("bos", _BOS_NAMES), ("eos", _EOS_NAMES), ("pad", _PAD_NAMES)):
        if key in configured and configured[key] is None:
            out[key] = None
            continue
        candidates = ([configured[key]] if key in configured else []) + list(names)
        out[key] = next((tokenizer.token_to_id(n) for n in candidates if tokenizer.token_to_id(n) is not None), None)
    return out
