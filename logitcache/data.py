"""`prepare`: raw text -> cleaned text -> BPE tokenizer (train split) -> 128-token chunk store."""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .store import TokenStore, token_dtype, write_token_store
from .cleaners import cleaner_for
from .configs import sha256_file, to_dict, write_json_atomic
from .errors import LogitcacheError
from .memory import default_heap
from .progress import NULL_PROGRESS, ProgressHook
from .stage_configs import PrepareConfig  # noqa: F401  (re-exported)
from .tokenizer import EOS_ID, encode_text, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
_RAW_NAME = re.compile(r"^(?P<source>[^.]+)\.(?P<split>train|dev|test)$")


@dataclass
class PrepareReport:
    splits: dict = field(default_factory=dict)  # split -> {"chunks", "tokens"}
    vocab_size: int = 0
    fingerprint: str = ""
    sources: dict = field(default_factory=dict)  # source -> {"words", "tokens", "replaced_bytes"}
    seconds: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"splits": self.splits, "vocab_size": self.vocab_size, "fingerprint": self.fingerprint,
                "sources": self.sources, "seconds": self.seconds}


def find_raw_files(data: Path) -> dict[tuple[str, str], list[Path]]:
    """{(source, split): [paths]} for every `<source>.<split>` file under `data` (recursive)."""
    data = Path(data)
    if not data.is_dir():
        raise LogitcacheError(f"raw data directory {data} does not exist")
    found: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(data.rglob("*")):
        match = _RAW_NAME.match(path.name)
        if match and path.is_file():
            found.setdefault((match["source"], match["split"]), []).append(path)
    if not any(split == "train" for _, split in found):
        raise LogitcacheError(f"no '<source>.train' files under {data} (expected the BabyLM raw layout)")
    return found


def read_text(path: Path) -> tuple[str, int]:
    """Decode as UTF-8, replacing bad bytes; returns (text, number of replacement characters added)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LogitcacheError(f"cannot read {path}: {exc.strerror}") from None
    text = raw.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def chunk(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Contiguous (N, seq_len) chunks; the remainder (< seq_len tokens) is dropped."""
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


def fingerprint(tokenizer_sha: str, splits: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(tokenizer_sha.encode())
    for name in sorted(splits):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(splits[name]).tobytes())
    return digest.hexdigest()


def spread_indices(n_rows: int, count: int) -> np.ndarray:
    """`count` row indices spread evenly over `n_rows` (all rows when count is 0 or too large).

    Splits are stored in source order, so the first N chunks would all come from one source."""
    if count <= 0 or count >= n_rows:
        return np.arange(n_rows)
    return np.linspace(0, n_rows - 1, count).round().astype(np.int64)


def validation_indices(n_dev: int, count: int = 8192, seed: int = 0) -> np.ndarray:
    """The fixed, seeded validation subset of dev (all of dev if it is smaller)."""
    if n_dev <= count:
        return np.arange(n_dev)
    return np.sort(np.random.default_rng(seed).choice(n_dev, size=count, replace=False))


def prepare(config: PrepareConfig, progress: ProgressHook = NULL_PROGRESS) -> PrepareReport:
    import time

    report = PrepareReport(vocab_size=config.vocab_size)
    files = find_raw_files(config.data)
    sources = sorted({source for source, _ in files})
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    cleaned: dict[tuple[str, str], str] = {}
    progress.start("clean", len(files))
    for (source, split), paths in sorted(files.items()):
        texts = []
        for path in paths:
            text, replaced = read_text(path)
            texts.append(cleaner_for(source)(text))
            entry = report.sources.setdefault(source, {"words": 0, "tokens": 0, "replaced_bytes": 0})
            entry["replaced_bytes"] += replaced
        cleaned[(source, split)] = "".join(t if t.endswith("\n") or not t else t + "\n" for t in texts)
        report.sources[source]["words"] += len(cleaned[(source, split)].split())
        progress.update(1)
    progress.finish()
    report.seconds["clean"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress.start("tokenizer", None)

    def train_lines():
        for (source, split), text in sorted(cleaned.items()):
            if split == "train":
                yield from text.splitlines()

    with default_heap():  # the tuned torch heap makes the Rust trainer ~90x slower
        tokenizer = train_tokenizer(train_lines(), config.vocab_size)
    tokenizer_path = out / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    progress.finish()
    report.seconds["tokenizer"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress.start("tokenize", len(cleaned))
    split_arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        pieces: list[list[int]] = []
        for source in sources:  # fixed, sorted source order; documents joined with </s>
            if (source, split) not in cleaned:
                continue
            with default_heap():
                ids = encode_text(tokenizer, cleaned[(source, split)])
            report.sources[source]["tokens"] += len(ids)
            pieces.append(ids + [EOS_ID])
            progress.update(1)
        flat = np.fromiter((i for piece in pieces for i in piece), dtype=np.int64)
        split_arrays[split] = chunk(flat, config.seq_len).astype(token_dtype(config.vocab_size))
        report.splits[split] = {"chunks": int(split_arrays[split].shape[0]),
                                "tokens": int(split_arrays[split].size)}
    progress.finish()
    report.seconds["tokenize"] = time.perf_counter() - t0

    tok_sha = sha256_file(tokenizer_path)
    report.fingerprint = fingerprint(tok_sha, split_arrays)
    attrs = {
        "kind": "tokens", "package_version": __version__, "seq_len": config.seq_len,
        "vocab_size": tokenizer.get_vocab_size(), "sources": report.sources, "tokenizer_sha256": tok_sha,
        "fingerprint": report.fingerprint, "config": to_dict(config),
    }
    write_token_store(out / "tokens.zarr", split_arrays, attrs)
    write_json_atomic(out / "prepare_config.json", to_dict(config))
    write_json_atomic(out / "prepare_report.json", report.to_json())
    log.info("prepared %s: %s", out, report.splits)
    return report


@dataclass(frozen=True)
class PreparedData:
    """A prepared data dir: the token store, its tokenizer path and the attributes."""

    path: Path
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

    def validation_rows(self, split: str = "dev", count: int = 8192, seed: int = 0) -> np.ndarray:
        rows = self.store.split(split)
        if split == "dev":
            rows = rows[validation_indices(rows.shape[0], count, seed)]
        return rows


def load_data(path: Path) -> PreparedData:
    path = Path(path)
    if not path.is_dir():
        raise LogitcacheError(f"data directory {path} does not exist (run `logitcache prepare`)")
    tokenizer_path = path / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise LogitcacheError(f"{path} has no tokenizer.json (is it a prepared data dir?)")
    store = TokenStore(path / "tokens.zarr")
    if sha256_file(tokenizer_path) != store.attrs.get("tokenizer_sha256"):
        raise LogitcacheError(f"{tokenizer_path} does not match the tokenizer recorded in {path}/tokens.zarr")
    load_tokenizer(tokenizer_path)
    return PreparedData(path, store, tokenizer_path)
