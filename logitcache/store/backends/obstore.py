"""An s3:// prefix through obstore's S3Store (Rust) in zarr's ObjectStore, chosen with the storage option
backend=obstore or LOGITCACHE_STORAGE_BACKEND=obstore (benchmarks/bench_remote.py: faster block reads and
less CPU taken from the teachers than s3fs)."""
from __future__ import annotations

import os

from ..location import check_key
from .remote import RemoteLocation


class ObstoreLocation(RemoteLocation):
    backend = "obstore"

    def _open_store(self, read_only: bool):
        """The endpoint from endpoint_url or AWS_ENDPOINT_URL; other storage options are S3Store settings
        (credentials and region come from the AWS_* variables)."""
        from obstore.store import S3Store
        from zarr.storage import ObjectStore

        options = dict(self.options.settings)
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
            except obstore.exceptions.InvalidPathError:  # the bucket answered; a name obstore refuses is no matter here
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
