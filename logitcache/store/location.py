"""Where a store lives: a local folder or an object-store URL (s3://, gs:// with gcsfs, file://).

A `Location` hands out the Zarr v3 store for its place (LocalStore, or FsspecStore over s3fs/gcsfs)
and the few object operations the cache protocol needs beyond Zarr (docs/architecture.md, "Caches
in object storage"): read and write one object, create one only if absent (the creation claim),
list sizes, delete everything. Keys are relative to the location ("zarr.json", "done/c/3").

Credentials and endpoints come from the standard places (AWS_* variables and profiles,
AWS_ENDPOINT_URL for S3-compatible servers) plus `set_storage_options` (the CLI's
`--storage-option key=value`). Transient errors (5xx, throttling, timeouts) are retried with backoff
by botocore and s3fs; permanent ones (no such bucket, access denied, bad credentials, unreachable
endpoint) become one LogitcacheError line.
"""
from __future__ import annotations

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
# or LOGITCACHE_STORAGE_BACKEND.
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


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Location:
    """A local folder or a remote prefix; `str(location)` is what the user typed (normalised)."""

    def __init__(self, where: "str | Path | Location"):
        if isinstance(where, Location):
            self.protocol, self.path, self.url = where.protocol, where.path, where.url
            return
        text = os.fspath(where)
        if is_url(text):
            protocol, rest = text.split("://", 1)
            protocol = protocol.lower()
            if protocol == "file":
                text = rest
            elif protocol in REMOTE_PROTOCOLS:
                rest = rest.strip("/")
                if not rest:
                    raise LogitcacheError(f"{text}: a URL needs a bucket and a path ({protocol}://bucket/prefix)")
                self.protocol, self.path, self.url = protocol, rest, f"{protocol}://{rest}"
                return
            else:
                raise LogitcacheError(f"{text}: unsupported storage URL scheme '{protocol}://' "
                                      f"(use a local path, file://, or one of {', '.join(p + '://' for p in REMOTE_PROTOCOLS)})")
        self.protocol, self.path = "file", str(Path(text).absolute())
        self.url = str(text)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and (self.protocol, self.path) == (other.protocol, other.path)

    def __hash__(self) -> int:
        return hash((self.protocol, self.path))

    @property
    def is_remote(self) -> bool:
        return self.protocol != "file"

    @property
    def local_path(self) -> Path:
        assert not self.is_remote, self.url
        return Path(self.path)

    def child(self, name: str) -> "Location":
        if not self.is_remote:
            return Location(Path(self.url) / name)
        return Location(f"{self.url}/{name}")

    @property
    def backend(self) -> str:
        if self.protocol != "s3":
            return "fsspec"
        return _STORAGE_OPTIONS.get("backend") or os.environ.get("LOGITCACHE_STORAGE_BACKEND") or "fsspec"

    @property
    def storage_options(self) -> dict:
        base = S3_DEFAULTS if self.protocol == "s3" else {}
        return _merge(base, {k: v for k, v in _STORAGE_OPTIONS.items() if k != "backend"})

    # -- Zarr ---------------------------------------------------------------------------------------
    def zarr_store(self, read_only: bool = True):
        """The Zarr v3 store rooted here: LocalStore, FsspecStore or (backend obstore) ObjectStore; remote
        ones are made once per process, place and mode, so their connections are reused."""
        from zarr.storage import FsspecStore, LocalStore

        if not self.is_remote:
            return LocalStore(self.path, read_only=read_only)
        key = (self.url, read_only, self.backend, json.dumps(_STORAGE_OPTIONS, sort_keys=True), os.getpid())
        if key not in _ZARR_STORES:
            try:
                with self.errors():
                    if self.backend == "obstore":
                        _ZARR_STORES[key] = self._obstore(read_only)
                    else:
                        _ZARR_STORES[key] = FsspecStore.from_url(self.url, storage_options=self.storage_options,
                                                                 read_only=read_only)
            except (TypeError, ValueError) as exc:  # an unknown keyword, a bad value
                raise LogitcacheError(f"{self.url}: storage options rejected ({exc})") from None
        return _ZARR_STORES[key]

    def _obstore(self, read_only: bool):
        """zarr's ObjectStore over obstore's S3Store; the endpoint from endpoint_url or AWS_ENDPOINT_URL, other
        storage options are S3Store settings (credentials and region come from the AWS_* variables)."""
        from obstore.store import S3Store
        from zarr.storage import ObjectStore

        options = {k: v for k, v in _STORAGE_OPTIONS.items() if k != "backend"}
        endpoint = options.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
        client_options = dict(options.pop("client_options", {}))
        if endpoint and endpoint.startswith("http://"):
            client_options.setdefault("allow_http", True)
        bucket, _, prefix = self.path.partition("/")
        store = S3Store(bucket, prefix=prefix or None, client_options=client_options,
                        **({"endpoint": endpoint} if endpoint else {}), **options)
        return ObjectStore(store, read_only=read_only)

    # -- objects ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def errors(self):
        """Permanent storage errors -> one LogitcacheError line (transient ones were retried below)."""
        try:
            yield
        except LogitcacheError:
            raise
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise LogitcacheError(f"{self.url}: bucket '{self.bucket}' does not exist") from None
            raise
        except PermissionError as exc:
            raise LogitcacheError(f"{self.url}: access denied ({exc}); check the credentials (AWS_* variables, "
                                  "profile, --storage-option)") from None
        except Exception as exc:  # botocore, aiohttp, obstore: recognised by their messages
            text = f"{exc.__class__.__name__}: {exc}"
            if not self.is_remote:
                raise
            if isinstance(exc, TypeError) and "keyword argument" in text:  # s3fs builds its client lazily
                raise LogitcacheError(f"{self.url}: storage options rejected ({exc})") from None
            if "NoSuchBucket" in text:
                raise LogitcacheError(f"{self.url}: bucket '{self.bucket}' does not exist") from None
            if any(s in text for s in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Unauthenticated",
                                       "PermissionDenied", "Unable to locate credentials")):
                raise LogitcacheError(f"{self.url}: access denied or bad credentials; check the AWS_* variables, "
                                      "the profile or --storage-option") from None
            if isinstance(exc, ImportError):
                raise LogitcacheError(f"{self.url}: the {self.backend} transport needs a package that is not installed "
                                      f"({exc})") from None
            if any(s in text for s in ("Could not connect", "Cannot connect", "Connect call failed", "Connection refused",
                                       "error sending request")):
                raise LogitcacheError(f"{self.url}: storage unreachable ({' '.join(text.split())[:300]})") from None
            raise

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    def _run(self, coro):
        from zarr.core.sync import sync

        with self.errors():
            return sync(coro)

    def check_reachable(self) -> None:
        """Fail now, in one line, when the bucket is missing or the credentials are refused."""
        if self.protocol != "s3":
            return
        from zarr.core.sync import sync

        store = self.zarr_store()
        if self.backend == "obstore":
            import obstore

            async def top_level():  # obstore's coroutines must be made on the running loop
                return await obstore.list_with_delimiter_async(store.store)

            self._run(top_level())
            return
        try:
            with self.errors():
                sync(store.fs._call_s3("head_bucket", Bucket=self.bucket))
        except FileNotFoundError:  # HEAD answers 404 without a body: no message to go by
            raise LogitcacheError(f"{self.url}: bucket '{self.bucket}' does not exist") from None

    def read_bytes(self, key: str) -> bytes | None:
        """One object's bytes, or None when it does not exist."""
        if not self.is_remote:
            try:
                return (Path(self.path) / key).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        from zarr.core.buffer import default_buffer_prototype

        buffer = self._run(self.zarr_store().get(key, prototype=default_buffer_prototype()))
        return None if buffer is None else buffer.to_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object whole (atomic: a local temp file and rename; one PUT remotely)."""
        from zarr.core.buffer import default_buffer_prototype

        store = self.zarr_store(read_only=False)
        self._run(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write one object only if it does not exist (atomically: a hard link locally, a conditional PUT
        with If-None-Match on S3); False when it already existed. On S3 any 412 answer to the claim means
        taken, whatever the server's body (AWS names the condition, MinIO and others do not) and however
        the transport words it. gs:// has no conditional PUT here: the claim is written, then read back."""
        from zarr.core.buffer import default_buffer_prototype

        store = self.zarr_store(read_only=False)
        if self.backend == "obstore":
            import obstore

            async def put_if_absent():
                return await obstore.put_async(store.store, key, data, mode="create")

            try:
                self._run(put_if_absent())
            except (obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError):
                return False
            return True
        if self.protocol == "s3":
            coro = store.fs._pipe_file(f"{store.path}/{key}", data, mode="create")
        else:
            coro = store.set_if_not_exists(key, default_buffer_prototype().buffer.from_bytes(data))
        try:
            self._run(coro)
        except FileExistsError:
            return False
        except OSError as exc:
            if self.protocol == "s3" and _precondition_failed(exc):
                return False
            raise
        if self.protocol != "s3":  # LocalStore's (and fsspec's generic) set_if_not_exists is silent when the key exists
            return self.read_bytes(key) == data
        return True

    def sizes(self) -> dict[str, int]:
        """{key: bytes} of every object under this location ({} when nothing is there)."""
        if not self.is_remote:
            root = Path(self.path)
            if not root.is_dir():
                return {}
            return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
                    if p.is_file() and not p.name.endswith(".partial")}
        store = self.zarr_store()
        if self.backend == "obstore":
            import obstore

            async def every_object():
                return await obstore.list(store.store).collect_async()

            return {meta["path"]: int(meta["size"]) for meta in self._run(every_object())}
        try:
            found = self._run(store.fs._find(store.path, detail=True))
        except FileNotFoundError:
            return {}
        prefix = store.path.rstrip("/") + "/"
        return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items() if name.startswith(prefix)}

    def exists(self) -> bool:
        """Anything at all here (a folder, a file, or objects under the prefix)."""
        if not self.is_remote:
            return Path(self.path).exists()
        return bool(self.sizes())

    def delete_all(self) -> None:
        """Delete everything here; the root `zarr.json` goes first, so a half-deleted store is never a store."""
        if not self.is_remote:
            path = Path(self.path)
            (path / "zarr.json").unlink(missing_ok=True)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            return
        store = self.zarr_store(read_only=False)
        self._run(store.delete("zarr.json"))
        self._run(store.delete_dir(""))


def _precondition_failed(exc: BaseException) -> bool:
    """An S3 answer of 412 Precondition Failed somewhere in the exception's cause chain (s3fs raises
    OSError(EINVAL) from botocore's ClientError when the body does not name the condition)."""
    while exc is not None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            if status == 412 or code in ("PreconditionFailed", "412"):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def as_location(where: "str | Path | Location") -> Location:
    return where if isinstance(where, Location) else Location(where)
