"""The remote store backends behind `Location` (location.py): objects under a bucket prefix, through fsspec
(s3fs for s3://, gcsfs for gs://) or obstore (s3://). The transports' private calls and the matching of
their error messages live here and nowhere else."""
from __future__ import annotations

import abc
import contextlib
import json
import os
import re

from ..errors import LogitcacheError
from .location import _STORAGE_OPTIONS, _ZARR_STORES, S3_DEFAULTS, Location, _buffer, _merge, check_key

# words in botocore's, aiohttp's and obstore's messages that mean refused credentials / no endpoint
DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Unauthenticated", "PermissionDenied",
          "Unable to locate credentials")
UNREACHABLE = ("Could not connect", "Cannot connect", "Connect call failed", "Connection refused",
               "error sending request")


class RemoteLocation(Location):
    """What every object-store transport shares: the Zarr store made once per process, place, mode and
    options (so its connections are reused), reads, writes and deletes through it, and the one-line errors."""

    is_remote = True

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    def child(self, name: str) -> Location:
        return Location(f"{self.url}/{name}")

    @abc.abstractmethod
    def _open_store(self, read_only: bool):
        """The transport's Zarr store for this prefix (made once, by `zarr_store`)."""

    def zarr_store(self, read_only: bool = True):
        key = (self.url, read_only, self.backend, json.dumps(_STORAGE_OPTIONS, sort_keys=True), os.getpid())
        if key not in _ZARR_STORES:
            try:
                with self.errors():
                    _ZARR_STORES[key] = self._open_store(read_only)
            except (TypeError, ValueError) as exc:  # an unknown keyword, a bad value
                raise LogitcacheError(f"{self.url}: storage options rejected ({exc})") from None
        return _ZARR_STORES[key]

    @contextlib.contextmanager
    def errors(self):
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
            self._raise_known(exc)
            raise

    def _raise_known(self, exc: Exception) -> None:
        """A LogitcacheError line for an exception the transports word in a known way; returns otherwise."""
        text = f"{exc.__class__.__name__}: {exc}"
        if isinstance(exc, TypeError) and "keyword argument" in text:  # s3fs builds its client lazily
            raise LogitcacheError(f"{self.url}: storage options rejected ({exc})") from None
        if "NoSuchBucket" in text:
            raise LogitcacheError(f"{self.url}: bucket '{self.bucket}' does not exist") from None
        if any(s in text for s in DENIED):
            raise LogitcacheError(f"{self.url}: access denied or bad credentials; check the AWS_* variables, "
                                  "the profile or --storage-option") from None
        if isinstance(exc, ImportError):
            raise LogitcacheError(f"{self.url}: the {self.backend} transport needs a package that is not installed "
                                  f"({exc})") from None
        if "InvalidPathError" in text:  # obstore lists an object whose name holds '..', '.' or an empty part
            name = re.search(r'Path "([^"]*)"', text)
            raise LogitcacheError(f"{self.url}: refused the object name {name.group(1) if name else '?'!r} (absolute, "
                                  "empty, or holding '..', '.' or a backslash: it could name something outside)") from None
        if any(s in text for s in UNREACHABLE):
            raise LogitcacheError(f"{self.url}: storage unreachable ({' '.join(text.split())[:300]})") from None

    def read_bytes(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype

        buffer = self._run(self.zarr_store().get(check_key(self, key), prototype=default_buffer_prototype()))
        return None if buffer is None else buffer.to_bytes()

    def exists(self) -> bool:
        return bool(self.sizes())

    def delete_all(self) -> None:
        """Every object listed under the prefix, one by one (the bucket itself stays, even at its root)."""
        import asyncio

        store = self.zarr_store(read_only=False)
        keys = sorted(self.sizes())
        self._run(store.delete("zarr.json"))
        limit = asyncio.Semaphore(32)

        async def delete(key: str) -> None:
            async with limit:
                await store.delete(key)

        async def every_key():
            await asyncio.gather(*(delete(key) for key in keys if key != "zarr.json"))

        self._run(every_key())


class FsspecLocation(RemoteLocation):
    """A prefix through an fsspec filesystem (gcsfs for gs://), in zarr's FsspecStore."""

    backend = "fsspec"

    @property
    def storage_options(self) -> dict:
        return {k: v for k, v in _STORAGE_OPTIONS.items() if k != "backend"}

    def _open_store(self, read_only: bool):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, storage_options=self.storage_options, read_only=read_only)

    def check_reachable(self) -> None:
        return None  # no cheap probe here: the first read says what is wrong

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """gs:// has no conditional PUT here: the claim is written if absent (fsspec's set_if_not_exists is
        silent when the key exists), then read back, so an existing object is never taken as our claim."""
        try:
            self._run(self.zarr_store(read_only=False).set_if_not_exists(check_key(self, key), _buffer(data)))
        except FileExistsError:
            return False
        return self.read_bytes(key) == data

    def sizes(self) -> dict[str, int]:
        store = self.zarr_store()
        try:
            found = self._run(store.fs._find(store.path, detail=True))
        except FileNotFoundError:
            return {}
        prefix = store.path.rstrip("/") + "/"
        return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items() if name.startswith(prefix)}


class S3FsspecLocation(FsspecLocation):
    """An s3:// prefix through s3fs (the default transport): botocore's retries, a conditional PUT for the claim."""

    @property
    def storage_options(self) -> dict:
        return _merge(S3_DEFAULTS, super().storage_options)

    def check_reachable(self) -> None:
        store = self.zarr_store()
        try:
            self._run(store.fs._call_s3("head_bucket", Bucket=self.bucket))
        except FileNotFoundError:  # HEAD answers 404 without a body: no message to go by
            raise LogitcacheError(f"{self.url}: bucket '{self.bucket}' does not exist") from None

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """A PUT with If-None-Match: any 412 answer means taken, whatever the server's body (AWS names the
        condition, MinIO and others do not) and however s3fs words it."""
        store = self.zarr_store(read_only=False)
        try:
            self._run(store.fs._pipe_file(f"{store.path}/{check_key(self, key)}", data, mode="create"))
        except FileExistsError:
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        return True


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


class ObstoreLocation(RemoteLocation):
    """An s3:// prefix through obstore's S3Store, in zarr's ObjectStore (chosen with backend=obstore)."""

    backend = "obstore"

    def _open_store(self, read_only: bool):
        """The endpoint from endpoint_url or AWS_ENDPOINT_URL; other storage options are S3Store settings
        (credentials and region come from the AWS_* variables)."""
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

    def check_reachable(self) -> None:
        import obstore

        store = self.zarr_store().store

        async def top_level():  # obstore's coroutines must be made on the running loop
            try:
                return await obstore.list_with_delimiter_async(store)
            except obstore.exceptions.InvalidPathError:  # the bucket answered: a name obstore refuses is no matter here
                return None

        self._run(top_level())

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """A conditional PUT (mode create); the store answering 412 or 'exists' means taken."""
        import obstore

        store = self.zarr_store(read_only=False).store

        async def put_if_absent():
            return await obstore.put_async(store, check_key(self, key), data, mode="create")

        try:
            self._run(put_if_absent())
        except (obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError):
            return False
        return True

    def sizes(self) -> dict[str, int]:
        import obstore

        store = self.zarr_store().store

        async def every_object():
            return await obstore.list(store).collect_async()

        return {meta["path"]: int(meta["size"]) for meta in self._run(every_object())}
