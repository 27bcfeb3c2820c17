"""A prepared data dir as the later stages read it: the token store, its tokenizer and attributes
(written by `prepare`, checked by `verify`), and the row selections every stage shares."""
from __future__ import annotations

import atexit
import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LogitcacheError
from ..files import sha256_file
from ..store import TokenStore
from ..store.backends import as_location
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, load_tokenizer, tokenizer_file_identity



def fingerprint(tokenizer_sha: str, splits: dict[str, np.ndarray],
                texts: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> str:
    """sha256 over the tokenizer's sha256, every split's tokens (split names in order), then every split's
    text record (text bytes, token ends as stored), as verify_data recomputes it."""
    digest = hashlib.sha256(tokenizer_sha.encode())
    for name in sorted(splits):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(splits[name]).tobytes())
    for name in sorted(texts or {}):
        for label, values in zip(("bytes", "ends"), texts[name]):
            digest.update(f"text/{name}_{label}".encode())
            digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def spread_indices(n_rows: int, count: int) -> np.ndarray:
    """`count` row indices spread evenly over `n_rows` (all rows when count is 0 or too large).

    Splits are stored in source order, so the first N chunks would all come from one source."""
    if count <= 0 or count >= n_rows:
        return np.arange(n_rows)
    return np.linspace(0, n_rows - 1, count).round().astype(np.int64)


def selected_indices(n_rows: int, max_chunks: int, row_selection: str = "spread") -> np.ndarray:
    """The split rows a dump caches: all (max_chunks 0), the first N, or N spread evenly (spread_indices)."""
    if row_selection == "first" and max_chunks:
        return np.arange(min(n_rows, max_chunks))
    return spread_indices(n_rows, max_chunks)


def validation_indices(n_dev: int, count: int = 8192, seed: int = 0) -> np.ndarray:
    """The fixed, seeded validation subset of dev (all of dev if it is smaller)."""
    if n_dev <= count:
        return np.arange(n_dev)
    return np.sort(np.random.default_rng(seed).choice(n_dev, size=count, replace=False))


def document_prefix(tokenizer, specials: dict) -> int | None:
    """The id in front of every document of a prepared split (tokenize_split): the BOS the tokenizer's
    template prepends, else the EOS that ends the document before (GPT-2 style); None without either.
    BLiMP scoring (evaluate.py) and the exported tokenizer (export.py) prefix sentences with it."""
    if specials.get("bos") is not None and tokenizer.encode("a", add_special_tokens=True).ids[:1] == [specials["bos"]]:
        return specials["bos"]
    return specials.get("eos")


@dataclass(frozen=True)
class PreparedData:
    """A prepared data dir: the token store, its tokenizer path and the attributes."""

    path: "Path | str"  # a local folder, or the URL of a remote one
    store: TokenStore
    tokenizer_path: Path

    @property
    def attrs(self) -> dict:
        return self.store.attrs

    @property
    def vocab_size(self) -> int:
        return int(self.store.attrs["vocab_size"])

    @property
    def seq_len(self) -> int:
        return int(self.store.attrs["seq_len"])

    @property
    def fingerprint(self) -> str:
        return self.store.attrs["fingerprint"]

    @functools.cached_property
    def tokenizer_identity(self) -> str:
        """What the data's tokenizer does (tokenizer.tokenizer_identity), for comparing teachers' tokenizers."""
        return tokenizer_file_identity(self.tokenizer_path)

    @property
    def special_ids(self) -> dict:
        """{"bos", "eos", "pad"}: the ids prepare recorded (older stores: logitcache's own BPE's)."""
        return dict(self.store.attrs.get("special_ids") or {"bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID})

    def validation_rows(self, split: str = "dev", count: int = 8192, seed: int = 0) -> np.ndarray:
        rows = self.store.split(split)
        if split == "dev":
            rows = rows[validation_indices(rows.shape[0], count, seed)]
        return rows


def load_data(path) -> PreparedData:
    """A prepared data dir: a local folder or a URL (s3://bucket/prefix/data); a remote tokenizer.json
    is fetched into a temporary folder (removed at exit)."""
    location = as_location(path)
    if location.is_remote:
        location.check_reachable()
        tokenizer_bytes = location.read_bytes("tokenizer.json")
        if tokenizer_bytes is None:
            raise LogitcacheError(f"{location} has no tokenizer.json (is it a prepared data dir?)")
        folder = Path(tempfile.mkdtemp(prefix="logitcache-data-"))
        atexit.register(shutil.rmtree, folder, True)
        tokenizer_path = folder / "tokenizer.json"
        tokenizer_path.write_bytes(tokenizer_bytes)
        path = location.url
    else:
        path = location.local_path
        if not path.is_dir():
            raise LogitcacheError(f"data directory {path} does not exist (run `logitcache prepare`)")
        tokenizer_path = path / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise LogitcacheError(f"{path} has no tokenizer.json (is it a prepared data dir?)")
    store = TokenStore(location.child("tokens.zarr"))
    if sha256_file(tokenizer_path) != store.attrs.get("tokenizer_sha256"):
        raise LogitcacheError(f"{tokenizer_path} does not match the tokenizer recorded in {path}/tokens.zarr")
    load_tokenizer(tokenizer_path)
    return PreparedData(path, store, tokenizer_path)


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


def check_cache_matches(reader, data: "PreparedData") -> None:
    """Refuse a cache (a CacheReader) made with another tokenizer, other data or another vocabulary than `data`."""
    attrs = reader.attrs
    if attrs.get("tokenizer_sha256") != data.attrs["tokenizer_sha256"]:
        raise LogitcacheError(f"cache {reader.store.path} was made with a different tokenizer than {data.path}")
    if attrs.get("data_fingerprint") != data.fingerprint:
        raise LogitcacheError(f"cache {reader.store.path} was made from other data than {data.path} (fingerprint differs)")
    if attrs.get("vocab_size") != data.vocab_size:
        raise LogitcacheError(f"cache vocabulary {attrs.get('vocab_size')} differs from the data's {data.vocab_size}")
