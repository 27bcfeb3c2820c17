"""Where a store lives: the protocol every storage backend implements (`Location`), the options that
reach a backend (`StorageOptions`) and the rules for object names (`check_key`).

A Location is a local folder or an object-store prefix (s3://, gs://); the backends are the modules of
`store/backends/` and `backends.as_location(where, options)` is the factory. Each hands out the Zarr v3
store for its place and the few object operations the cache protocol needs beyond Zarr
(docs/architecture.md, "Caches in object storage"): read and write one object, create one only if absent
(the creation claim), list sizes, delete everything, check the place is reachable. Keys are relative to
the location ("zarr.json", "done/c/3") and never leave it (`check_key`).

Credentials and endpoints come from the standard places (AWS_* variables and profiles,
AWS_ENDPOINT_URL for S3-compatible servers) plus the StorageOptions (the CLI's `--storage-option
key=value`). Transient errors (5xx, throttling, timeouts) are retried with backoff by botocore and s3fs;
permanent ones (no such bucket, access denied, bad credentials, unreachable endpoint) become one
LogitcacheError line.
"""
from __future__ import annotations

import abc
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LogitcacheError

REMOTE_PROTOCOLS = ("s3", "gs", "gcs")
# s3:// transports: fsspec (s3fs, the default) or obstore (Rust; faster block reads and less CPU taken from
# the teachers: benchmarks/bench_remote.py), chosen by StorageOptions.backend or LOGITCACHE_STORAGE_BACKEND
BACKENDS = ("fsspec", "obstore")


@dataclass(frozen=True)
class StorageOptions:
    """How remote places are reached: `backend`, the s3:// transport ("" takes LOGITCACHE_STORAGE_BACKEND,
    else fsspec), and `settings`, the transport's keyword arguments (s3fs/gcsfs's, or obstore S3Store's:
    endpoint_url, client_kwargs.region_name, anon, ...). Never mutated once made."""

    backend: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.backend not in ("",) + BACKENDS:
            raise LogitcacheError(f"storage option backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

    @classmethod
    def of(cls, options: dict[str, Any]) -> "StorageOptions":
        """From one dict whose `backend` key, if any, picks the transport (what `--storage-option`s parse to)."""
        settings = dict(options)
        return cls(backend=settings.pop("backend", ""), settings=settings)

    @classmethod
    def parse(cls, pairs: list[str]) -> "StorageOptions":
        return cls.of(parse_storage_options(pairs))

    def transport(self) -> str:
        return self.backend or os.environ.get("LOGITCACHE_STORAGE_BACKEND") or "fsspec"

    def key(self) -> str:
        return json.dumps([self.backend, self.settings], sort_keys=True, default=str)

    def __hash__(self) -> int:
        return hash(self.key())


def parse_storage_options(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs -> options; values read as JSON when they parse (true, 8, "x"), dotted keys nest
    (`client_kwargs.region_name=eu-west-1`)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise LogitcacheError(f"--storage-option takes key=value, got {pair!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        node = options
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return options


def is_url(where) -> bool:
    return isinstance(where, str) and "://" in where


def parse_place(where: "str | Path") -> tuple[str, str, str]:
    """What the user typed -> (protocol, path, url): ("file", absolute folder, as typed) or
    ("s3", "bucket/prefix", "s3://bucket/prefix")."""
    text = os.fspath(where)
    if is_url(text):
        protocol, rest = text.split("://", 1)
        protocol = protocol.lower()
        if protocol in REMOTE_PROTOCOLS:
            rest = rest.strip("/")
            if not rest:
                raise LogitcacheError(f"{text}: a URL needs a bucket and a path ({protocol}://bucket/prefix)")
            return protocol, rest, f"{protocol}://{rest}"
        if protocol != "file":
            raise LogitcacheError(f"{text}: unsupported storage URL scheme '{protocol}://' "
                                  f"(use a local path, file://, or one of {', '.join(p + '://' for p in REMOTE_PROTOCOLS)})")
        text = rest
    return "file", str(Path(text).absolute()), str(text)


def check_key(location: "Location", key: str) -> str:
    """A key as every backend takes it: relative, '/'-separated, no empty, '.' or '..' part, no backslash,
    so it names something under the location and nowhere else; any other key is refused in one line."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise LogitcacheError(f"{location}: refused the object name {key!r} (absolute, empty, or holding '..', "
                              "'.' or a backslash: it could name something outside)")
    return key


def buffer_of(data: bytes):
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


class Location(abc.ABC):
    """A local folder or a remote prefix, made by `backends.as_location`; `str(location)` is what the user
    typed (normalised). The protocol every backend implements is the abstract methods below, plus
    `child`, `is_remote` and `backend`; tests/store_contract.py::LocationTests checks it on each."""

    is_remote = False
    backend = ""  # the transport's name, part of the key of a cached Zarr store

    def __init__(self, protocol: str, path: str, url: str, options: StorageOptions = StorageOptions()):
        self.protocol = protocol  # "file", "s3", "gs" or "gcs"
        self.path = path  # the absolute folder, or "bucket/prefix"
        self.url = url
        self.options = options

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and (self.protocol, self.path) == (other.protocol, other.path)

    def __hash__(self) -> int:
        return hash((self.protocol, self.path))

    @property
    def local_path(self) -> Path:
        assert not self.is_remote, self.url
        return Path(self.path)

    @abc.abstractmethod
    def child(self, name: str) -> "Location":
        """The location `name` below this one, of the same backend and options."""

    @abc.abstractmethod
    def zarr_store(self, read_only: bool = True):
        """The Zarr v3 store rooted here."""

    @abc.abstractmethod
    def errors(self) -> contextlib.AbstractContextManager:
        """A context in which permanent storage errors become one LogitcacheError line (transient ones
        were retried below)."""

    @abc.abstractmethod
    def check_reachable(self) -> None:
        """Fail now, in one line, when the bucket is missing or the credentials are refused."""

    def check_no_links(self) -> None:
        """Before writing here: refuse, in one line, a symbolic link inside this location, which a write would
        follow out of it (listings skip links). Object storage has none."""

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """One object's bytes, or None when it does not exist."""

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object whole (atomic: a local temp file and rename; one PUT remotely)."""
        store = self.zarr_store(read_only=False)
        self._run(store.set(check_key(self, key), buffer_of(data)))

    @abc.abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write one object only if it does not exist, atomically; False when it already existed."""

    @abc.abstractmethod
    def sizes(self) -> dict[str, int]:
        """{key: bytes} of every object under this location ({} when nothing is there)."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """Anything at all here (a folder, a file, or objects under the prefix)."""

    @abc.abstractmethod
    def delete_all(self) -> None:
        """Delete everything here, the root `zarr.json` first, so a half-deleted store is never a store.
        Unchecked: the dump replaces a cache through `cache.delete_cache`, which checks what is there."""

    def _run(self, coro):
        from zarr.core.sync import sync

        with self.errors():
            return sync(coro)


__all__ = ["Location", "StorageOptions", "check_key", "is_url", "parse_place", "parse_storage_options", "BACKENDS",
           "REMOTE_PROTOCOLS"]
