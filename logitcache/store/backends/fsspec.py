"""Prefixes through an fsspec filesystem in zarr's FsspecStore: gs:// through gcsfs (`FsspecLocation`) and
s3:// through s3fs, the default s3 transport (`S3FsspecLocation`: botocore's retries, head_bucket, a
conditional PUT for the claim). s3fs's private calls live here and nowhere else."""
from __future__ import annotations

from ...errors import LogitcacheError
from ..location import buffer_of, check_key
from .remote import RemoteLocation

# retries for S3: botocore's standard mode retries 5xx, throttling and timeouts with exponential backoff
S3_DEFAULTS = {"use_listings_cache": False, "config_kwargs": {"retries": {"max_attempts": 8, "mode": "standard"}}}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class FsspecLocation(RemoteLocation):
    """gs:// (and any fsspec protocol) through its filesystem; the storage options are its keyword arguments."""

    backend = "fsspec"

    @property
    def storage_options(self) -> dict:
        return dict(self.options.settings)

    def _open_store(self, read_only: bool):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, storage_options=self.storage_options, read_only=read_only)

    def check_reachable(self) -> None:
        return None  # no cheap probe here: the first read says what is wrong

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """gs:// has no conditional PUT here: the claim is written if absent (fsspec's set_if_not_exists is
        silent when the key exists), then read back, so an existing object is never taken as our claim."""
        try:
            self._run(self.zarr_store(read_only=False).set_if_not_exists(check_key(self, key), buffer_of(data)))
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
