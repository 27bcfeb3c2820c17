"""Where a store lives: a local folder or an object-store URL (s3://, gs:// with gcsfs, file://).

`Location(where)` is the one factory: it parses what the user typed and returns the class for that place
and transport, each a small class behind the protocol `Location` defines: `LocalLocation` (a folder),
`FsspecLocation` (gs:// through gcsfs), `S3FsspecLocation` (s3:// through s3fs, the default) and
`ObstoreLocation` (s3:// through obstore); the remote ones live in `remote.py`. Each hands out the Zarr v3
store for its place and the few object operations the cache protocol needs beyond Zarr
(docs/architecture.md, "Caches in object storage"): read and write one object, create one only if absent
(the creation claim), list sizes, delete everything, check the place is reachable. Keys are relative to
the location ("zarr.json", "done/c/3").

Credentials and endpoints come from the standard places (AWS_* variables and profiles,
AWS_ENDPOINT_URL for S3-compatible servers) plus `set_storage_options` (the CLI's
`--storage-option key=value`). Transient errors (5xx, throttling, timeouts) are retried with backoff
by botocore and s3fs; permanent ones (no such bucket, access denied, bad credentials, unreachable
endpoint) become one LogitcacheError line.
"""
from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import LogitcacheError

REMOTE_PROTOCOLS = ("s3", "gs", "gcs")
# s3:// transports: fsspec (s3fs, the default) or obstore (Rust; measured 1.7-2.8x faster block reads and
# less CPU taken from the teachers: benchmarks/bench_remote.py). Chosen with --storage-option backend=obstore
# or LOGITCACHE_STORAGE_BACKEND, when a Location is made.
BACKENDS = ("fsspec", "obstore")
_STORAGE_OPTIONS: dict[str, Any] = {}
_ZARR_STORES: dict[tuple, Any] = {}  # one store (and connection pool) per place, mode and options
# retries for S3: botocore's standard mode retries 5xx, throttling and timeouts with exponential backoff
S3_DEFAULTS = {"use_listings_cache": False, "config_kwargs": {"retries": {"max_attempts": 8, "mode": "standard"}}}


def set_storage_options(options: dict[str, Any]) -> None:
    """Process-wide extra options for every remote location (s3fs/gcsfs keyword arguments)."""
    backend = options.get("backend", "fsspec")
    if backend not in BACKENDS:
        raise LogitcacheError(f"storage option backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    _STORAGE_OPTIONS.clear()
    _STORAGE_OPTIONS.update(options)
    _ZARR_STORES.clear()


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


def check_key(location: "Location", key: str) -> str:
    """A key as every store takes it: relative, '/'-separated, no '.' or '..' part, no backslash, so it
    names something under the location and nowhere else; any other key is refused in one line."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise LogitcacheError(f"{location}: refused the object name {key!r} (absolute, empty, or holding '..', "
                              "'.' or a backslash: it could name something outside)")
    return key


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _parse(where: "str | Path") -> tuple[str, str, str]:
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


def _class_for(protocol: str) -> type["Location"]:
    """The class for a place: s3:// takes the transport chosen by the storage options (or the environment)."""
    if protocol == "file":
        return LocalLocation
    if protocol != "s3":
        return FsspecLocation
    backend = _STORAGE_OPTIONS.get("backend") or os.environ.get("LOGITCACHE_STORAGE_BACKEND") or "fsspec"
    return ObstoreLocation if backend == "obstore" else S3FsspecLocation


def _made(kind: type["Location"], protocol: str, path: str, url: str) -> "Location":
    location = object.__new__(kind)
    location.protocol, location.path, location.url = protocol, path, url
    return location


class Location(abc.ABC):
    """A local folder or a remote prefix; `str(location)` is what the user typed (normalised).

    `Location(where)` (a path, a URL or another Location) returns the subclass for the place: the protocol
    every store backend implements is the abstract methods below, plus `child`, `is_remote` and `backend`."""

    protocol: str  # "file", "s3", "gs" or "gcs"
    path: str  # the absolute folder, or "bucket/prefix"
    url: str
    is_remote = False
    backend = ""  # the transport's name, part of the key of a cached Zarr store

    def __new__(cls, where: "str | Path | Location"):
        if isinstance(where, Location):
            protocol, path, url = where.protocol, where.path, where.url
        else:
            protocol, path, url = _parse(where)
        kind = _class_for(protocol)
        if not issubclass(kind, cls):
            raise TypeError(f"{url} is a {kind.__name__}, not a {cls.__name__}")
        return _made(kind, protocol, path, url)

    def __reduce__(self):  # pickling keeps the class chosen when the location was made
        return _made, (type(self), self.protocol, self.path, self.url)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

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
        """The location `name` below this one."""

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

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """One object's bytes, or None when it does not exist."""

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object whole (atomic: a local temp file and rename; one PUT remotely)."""
        store = self.zarr_store(read_only=False)
        self._run(store.set(check_key(self, key), _buffer(data)))

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
        """Delete everything here; the root `zarr.json` goes first, so a half-deleted store is never a store."""

    def _run(self, coro):
        from zarr.core.sync import sync

        with self.errors():
            return sync(coro)


def _buffer(data: bytes):
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


class LocalLocation(Location):
    """A folder on this machine (a plain path or file://), through zarr's LocalStore."""

    backend = "local"

    def child(self, name: str) -> Location:
        return Location(Path(self.url) / name)

    def zarr_store(self, read_only: bool = True):
        from zarr.storage import LocalStore

        return LocalStore(self.path, read_only=read_only)

    @contextlib.contextmanager
    def errors(self):
        try:
            yield
        except PermissionError as exc:
            raise LogitcacheError(f"{self.url}: access denied ({exc})") from None

    def check_reachable(self) -> None:
        return None

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return (Path(self.path) / check_key(self, key)).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """zarr's LocalStore.set_if_not_exists (a temp file moved in only where the key is absent) is silent
        when the key exists: the object is read back to tell our claim from an existing one."""
        self._run(self.zarr_store(read_only=False).set_if_not_exists(check_key(self, key), _buffer(data)))
        return self.read_bytes(key) == data

    def sizes(self) -> dict[str, int]:
        root = Path(self.path)
        if not root.is_dir():
            return {}
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
                if p.is_file() and not p.name.endswith(".partial")}

    def exists(self) -> bool:
        return Path(self.path).exists()

    def delete_all(self) -> None:
        path = Path(self.path)
        (path / "zarr.json").unlink(missing_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def as_location(where: "str | Path | Location") -> Location:
    return where if isinstance(where, Location) else Location(where)


# the remote classes import the names above (options, the base class); imported last for `_class_for`
from .remote import FsspecLocation, ObstoreLocation, S3FsspecLocation  # noqa: E402

__all__ = ["Location", "LocalLocation", "FsspecLocation", "S3FsspecLocation", "ObstoreLocation", "as_location",
           "is_url", "check_key", "parse_storage_options", "set_storage_options", "BACKENDS", "REMOTE_PROTOCOLS"]
