"""What every object-store backend shares (fsspec.py, obstore.py): the Zarr store made once per process,
place, mode and options (so its connections are reused), reads and deletes through it, and the matching
of the transports' error messages into one line."""
from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import re

from ...errors import LogitcacheError
from ..location import Location, check_key

# words in botocore's, aiohttp's and obstore's messages that mean refused credentials / no endpoint
DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Unauthenticated", "PermissionDenied",
          "Unable to locate credentials")
UNREACHABLE = ("Could not connect", "Cannot connect", "Connect call failed", "Connection refused",
               "error sending request")
_ZARR_STORES: dict[tuple, object] = {}  # one store (and connection pool) per place, mode, transport and options


class RemoteLocation(Location):
    """Objects under a bucket prefix."""

    is_remote = True

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    def child(self, name: str) -> Location:
        return type(self)(self.protocol, f"{self.path}/{name}", f"{self.url}/{name}", self.options)

    @abc.abstractmethod
    def _open_store(self, read_only: bool):
        """The transport's Zarr store for this prefix (made once, by `zarr_store`)."""

    def zarr_store(self, read_only: bool = True):
        key = (self.url, read_only, self.backend, self.options.key(), os.getpid())
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
            check_key(self, name.group(1) if name else "..")
        if any(s in text for s in UNREACHABLE):
            raise LogitcacheError(f"{self.url}: storage unreachable ({' '.join(text.split())[:300]})") from None

    def read_bytes(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype

        buffer = self._run(self.zarr_store().get(check_key(self, key), prototype=default_buffer_prototype()))
        return None if buffer is None else buffer.to_bytes()

    def exists(self) -> bool:
        return bool(self.sizes())

    def delete_all(self) -> None:
        """Every object listed under the prefix, the root `zarr.json` first, then the others one by one
        (the bucket itself stays, even at its root)."""
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
