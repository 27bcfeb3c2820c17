"""Teachers with tokenizers of their own: the data's text record, alignment, mapping and the cache.

Tokenizers are trained in-process: the data's byte-level BPE (prepare's), and teachers' (a) byte-level
BPE of another size, (b) Metaspace BPE with byte fallback (Llama-2 style), (c) unigram. The reference
test recomputes every target with a plain loop over `model(x).logits` of each teacher's own tokenization,
deriving boundaries by decoding prefixes, independent of logitcache/align.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_lines

# text with unicode, tabs, runs of spaces and newlines inside documents (prepare keeps them: one document
# per line, so the newlines sit inside Shakespeare-style blocks)
ODD_LINES = ["Crème brûlée,\tnaïve café.", "Tokyo: 東京タワー!  Two  spaces,\t\ttwo tabs.", "She said —   «oui».",
             "The Ωmega and ∑igma.", "Ça va? Très bien…"]


def odd_corpus(root: Path) -> Path:
    """The BabyLM layout with a Shakespeare-style source (blank-line blocks, newlines kept inside)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "dev", "test")):
        lines = synthetic_lines(300 if split == "train" else 60, 30 + i)
        blocks = []
        for j in range(0, len(lines), 3):
            odd = ODD_LINES[(j // 3) % len(ODD_LINES)]
            blocks.append("\n".join(lines[j:j + 3]) + "\n" + odd)
        (root / f"shakespeare.{split}").write_text("\n\n".join(blocks) + "\n")
        (root / f"stories.{split}").write_text("\n".join(lines) + "\n")
    return root


TRAIN_TEXT = [line for i in range(300) for line in synthetic_lines(1, i)] + ODD_LINES * 2


def teacher_byte_level():
    """(a) GPT-2-style byte-level BPE of another size (no BOS: GPT-2's <|endoftext|> only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(TRAIN_TEXT, trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tokenizer


def teacher_metaspace():
    """(b) Llama-2 style: BPE over ▁-words with <0xNN> byte fallback, Prepend/Replace normalizer, <s> template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.train_from_iterator([t for t in TRAIN_TEXT if "東" not in t], trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.pre_tokenizer = None
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def teacher_unigram():
    """(c) unigram over Metaspace words (every character of the corpus in its vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(TRAIN_TEXT * 2, trainers.UnigramTrainer(
        vocab_size=180, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    return tokenizer


def teacher_lowercase():
    """A lossy tokenizer: (a) behind a lowercasing normalizer."""
    from tokenizers import normalizers

    tokenizer = teacher_byte_level()
    tokenizer.normalizer = normalizers.Lowercase()
    return tokenizer


TEACHER_TOKENIZERS = {"byte-level": teacher_byte_level, "metaspace": teacher_metaspace, "unigram": teacher_unigram}


# --- the data's text record -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    from logitcache.data import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("cross")
    out = root / "data"
    prepare(PrepareConfig(data=odd_corpus(root / "raw"), out=out, vocab_size=300, seq_len=32))
    return out


def token_pieces(data_dir: Path, split: str) -> tuple[np.ndarray, list[bytes]]:
    """The split's tokens (N*T,) and the bytes of the text record each one covers."""
    from logitcache.data import load_data

    store = load_data(data_dir).store
    text, ends = store.split_text(split)
    starts = np.concatenate([[0], ends[:-1]])
    return store.split(split).reshape(-1), [bytes(text[s:e]) for s, e in zip(starts, ends)]


def byte_level_bytes(token: str) -> bytes:
    """GPT-2's bytes_to_unicode inverted, written out here (independent of logitcache.tokenizer)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return bytes(table[c] for c in token)


def test_the_record_spells_each_token_of_the_trained_bpe(odd_data):
    from logitcache.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(odd_data / "tokenizer.json")
    for split in ("train", "dev"):
        ids, pieces = token_pieces(odd_data, split)
        specials = {0, 1, 2}
        for token_id, piece in zip(ids.tolist(), pieces):
            expected = b"" if token_id in specials else byte_level_bytes(tokenizer.id_to_token(token_id))
            assert piece == expected, (split, token_id, piece)
    raw = (odd_data.parent / "raw" / "shakespeare.train").read_text()
    from logitcache.data import load_data

    text, _ = load_data(odd_data).store.split_text("train")
    assert "Crème brûlée,\tnaïve café.".encode() in bytes(text) and "\n" in raw


@pytest.mark.parametrize("kind", ["metaspace", "unigram"])
def test_the_record_of_another_tokenizer_comes_from_its_offsets(tmp_path, odd_data, kind):
    """prepare --tokenizer (a Metaspace BPE with byte fallback, a unigram): each token covers the text it
    stands for; the prefix space at a document start is no text; byte pieces of one character: all but the
    last zero-width, the last the whole character."""
    from logitcache.data import PrepareConfig, prepare
    from logitcache.tokenizer import token_byte_table

    tokenizer = TEACHER_TOKENIZERS[kind]()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "data"
    prepare(PrepareConfig(data=odd_data.parent / "raw", out=out, tokenizer=tmp_path / "tokenizer.json", seq_len=32))
    table = token_byte_table(tokenizer)
    ids, pieces = token_pieces(out, "train")
    byte_pieces = 0
    for i, (token_id, piece) in enumerate(zip(ids.tolist(), pieces)):
        spelled = table[token_id]
        if token_id == tokenizer.token_to_id("<unk>"):  # a character the vocabulary lacks ("\n", 東)
            assert len(piece) > 0
        elif spelled is None:
            assert piece == b""
        elif len(spelled) == 1 and spelled[0] >= 0x80:  # a byte-fallback piece of a character
            byte_pieces += 1
            assert piece == b"" or piece.decode().encode()[-1:] == spelled
        else:
            assert piece in (spelled, spelled[1:]), (i, tokenizer.id_to_token(token_id), piece)
    assert byte_pieces > 0 or kind == "unigram"


def test_verify_data_checks_the_text_record(tmp_path, odd_data):
    import shutil

    import zarr

    from logitcache.data import load_data
    from logitcache.store import verify_data

    assert verify_data(odd_data)["problems"] == []
    copy = tmp_path / "data"
    shutil.copytree(odd_data, copy)
    array = zarr.open_array(str(copy / "tokens.zarr" / "text" / "train_bytes"), mode="r+")
    array[5] = (int(array[5]) + 1) % 256
    problems = verify_data(copy)["problems"]
    assert any("text/train_bytes chunk 0: checksum mismatch" in p for p in problems), problems
    from logitcache.errors import LogitcacheError

    with pytest.raises(LogitcacheError, match="text/train_bytes chunk 0: checksum mismatch"):
        load_data(copy).store.split_text("train")
