"""The storage backends: the factory `as_location` picks one per place and transport, and every backend
runs the one contract (tests/store_contract.py::LocationTests): local disk, and s3fs and obstore against a
moto server. The transports' private calls stay inside their backend modules."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from logitcache.errors import LogitcacheError
from logitcache.store.backends import (FsspecLocation, LocalLocation, ObstoreLocation, S3FsspecLocation, as_location,
                                       default_options, set_default_options)
from logitcache.store.location import Location, StorageOptions
from store_contract import LocationTests


@pytest.mark.parametrize("where, env, kind", [
    ("rel/c.zarr", None, LocalLocation), ("file:///tmp/c.zarr", None, LocalLocation),
    ("gs://b/c.zarr", "obstore", FsspecLocation),  # obstore serves s3:// only
    ("s3://b/c.zarr", None, S3FsspecLocation), ("s3://b/c.zarr", "fsspec", S3FsspecLocation),
    ("s3://b/c.zarr", "obstore", ObstoreLocation)])
def test_the_factory_picks_the_class_for_the_place_and_transport(where, env, kind, monkeypatch):
    if env:
        monkeypatch.setenv("LOGITCACHE_STORAGE_BACKEND", env)
    else:
        monkeypatch.delenv("LOGITCACHE_STORAGE_BACKEND", raising=False)
    location = as_location(where)
    assert type(location) is kind
    again = pickle.loads(pickle.dumps(location))  # a worker gets the same place and the same transport
    assert type(again) is kind and again == location and str(again) == str(location)
    assert type(location.child("x")) is kind and str(location.child("x")).endswith("c.zarr/x")


def test_storage_options_choose_the_transport_and_travel_with_the_location(monkeypatch):
    """Options given to the factory win over the process default and the environment; a location keeps the
    options it was made with (its children too), whatever the default becomes later."""
    monkeypatch.setenv("LOGITCACHE_STORAGE_BACKEND", "fsspec")
    options = StorageOptions.parse(["backend=obstore", "endpoint_url=http://h:9000"])
    assert options == StorageOptions(backend="obstore", settings={"endpoint_url": "http://h:9000"})
    location = as_location("s3://b/c", options)
    assert type(location) is ObstoreLocation and location.child("x").options == options
    assert type(as_location("s3://b/c")) is S3FsspecLocation
    try:
        set_default_options(StorageOptions(backend="obstore"))
        assert type(as_location("s3://b/c")) is ObstoreLocation and default_options().backend == "obstore"
        assert type(as_location("s3://b/c", StorageOptions(backend="fsspec"))) is S3FsspecLocation
    finally:
        set_default_options(StorageOptions())
    assert location.options == options and as_location(location) is location
    with pytest.raises(LogitcacheError, match="backend must be one of fsspec, obstore"):
        StorageOptions(backend="ftp")


def test_the_protocol_is_no_factory():
    with pytest.raises(TypeError):
        Location("file", "/tmp/x", "/tmp/x")  # abstract: only a backend's class is made, by as_location
    with pytest.raises(LogitcacheError, match="unsupported storage URL scheme"):
        as_location("ftp://host/c")


def test_private_transport_calls_live_only_in_their_backend_modules():
    root = Path(__file__).resolve().parents[1]
    private = re.compile(r"\._call_s3\b|\._pipe_file\b|\.fs\._find\b|NoSuchBucket|AccessDenied|InvalidPathError")
    found = sorted(str(p.relative_to(root)) for folder in ("logitcache", "cli") for p in (root / folder).rglob("*.py")
                   if private.search(p.read_text()))
    assert found == ["logitcache/store/backends/fsspec.py", "logitcache/store/backends/obstore.py",
                     "logitcache/store/backends/remote.py"], found


class TestLocal(LocationTests):
    location_cls = LocalLocation

    @pytest.fixture
    def place(self, tmp_path) -> str:
        (tmp_path / "parent").mkdir()
        return str(tmp_path / "parent" / "store")

    def raw_put(self, place: str, key: str, data: bytes) -> None:
        path = Path(place) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def raw_get(self, place: str, key: str) -> bytes | None:
        path = Path(place) / key
        return path.read_bytes() if path.is_file() else None


class S3Tests(LocationTests):
    """A prefix in a fresh moto bucket, read and written around the backend with boto3."""

    @pytest.fixture
    def place(self, s3, s3_endpoint) -> str:
        self.endpoint = s3_endpoint
        return f"{s3}/parent/store"

    def client(self):
        import boto3

        from s3_server import CREDENTIALS

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                            **{k.lower(): v for k, v in CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"})

    def raw_put(self, place: str, key: str, data: bytes) -> None:
        bucket, _, prefix = place.removeprefix("s3://").partition("/")
        self.client().put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)

    def raw_get(self, place: str, key: str) -> bytes | None:
        bucket, _, prefix = place.removeprefix("s3://").partition("/")
        try:
            return self.client().get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()
        except self.client().exceptions.NoSuchKey:
            return None

    def test_a_listed_name_that_leaves_the_place_refuses_a_data_dir_copy(self, location, place, tmp_path):
        """What a bucket can hold and a disk cannot: an object named with '..' under the prefix."""
        from logitcache.store.copy import data_dir_keys

        self.raw_put(place, "../../outside/PWNED.txt", b"pwned")
        with pytest.raises(LogitcacheError, match=r"refused the object name '.*\.\./\.\./outside/PWNED.txt'"):
            data_dir_keys(location)

    def test_delete_all_at_a_bucket_root_keeps_the_bucket(self, location, place):
        bucket = as_location(place.rsplit("/", 2)[0], self.options)
        bucket.write_bytes("zarr.json", b"root")
        bucket.delete_all()
        assert bucket.sizes() == {} and self.client().head_bucket(Bucket=bucket.path)  # still there
        bucket.write_bytes("again", b"x")
        assert bucket.read_bytes("again") == b"x"


class TestS3Fsspec(S3Tests):
    location_cls = S3FsspecLocation
    options = StorageOptions(backend="fsspec")


class TestObstore(S3Tests):
    location_cls = ObstoreLocation
    options = StorageOptions(backend="obstore")
