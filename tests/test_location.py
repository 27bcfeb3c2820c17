"""`Location(where)`: one factory, one class per storage backend, and the transports' private calls kept
inside the remote classes. The backends' behaviour against a real S3 server is tests/test_remote.py's."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from logitcache.errors import LogitcacheError
from logitcache.store.location import (FsspecLocation, LocalLocation, Location, ObstoreLocation, S3FsspecLocation,
                                       set_storage_options)


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
    location = Location(where)
    assert type(location) is kind
    again = pickle.loads(pickle.dumps(location))  # a worker gets the same place and the same transport
    assert type(again) is kind and again == location and str(again) == str(location)
    assert type(location.child("x")) is kind and str(location.child("x")).endswith("c.zarr/x")


def test_the_storage_option_backend_chooses_obstore_for_s3(monkeypatch):
    monkeypatch.delenv("LOGITCACHE_STORAGE_BACKEND", raising=False)
    set_storage_options({"backend": "obstore"})
    try:
        assert type(Location("s3://b/c")) is ObstoreLocation
    finally:
        set_storage_options({})
    assert type(Location("s3://b/c")) is S3FsspecLocation


def test_a_subclass_refuses_another_place():
    with pytest.raises(TypeError, match="S3FsspecLocation, not a LocalLocation"):
        LocalLocation("s3://b/c")
    with pytest.raises(LogitcacheError, match="unsupported storage URL scheme"):
        Location("ftp://host/c")


def test_local_claim_is_taken_once_and_keeps_the_first_bytes(tmp_path):
    location = Location(tmp_path / "c.zarr")
    assert location.sizes() == {} and not location.exists()
    assert location.create_exclusive("zarr.json", b"first")
    assert not location.create_exclusive("zarr.json", b"second")
    assert location.read_bytes("zarr.json") == b"first" and location.read_bytes("missing") is None
    location.write_bytes("done/c/0", b"\x01")
    assert location.sizes() == {"zarr.json": 5, "done/c/0": 1}
    location.delete_all()
    assert not (tmp_path / "c.zarr").exists() and not location.exists()


def test_private_transport_calls_live_only_in_the_remote_classes():
    root = Path(__file__).resolve().parents[1]
    private = re.compile(r"\._call_s3\b|\._pipe_file\b|\.fs\._find\b|NoSuchBucket|AccessDenied")
    found = [str(p.relative_to(root)) for folder in ("logitcache", "cli") for p in (root / folder).rglob("*.py")
             if private.search(p.read_text())]
    assert found == ["logitcache/store/remote.py"], found


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/x", "a\\..\\x", "a/./b", "a//b", "", "x\0y"])
def test_an_unsafe_key_is_refused_before_any_file_is_touched(key, tmp_path):
    """Keys name objects under the location only: one that could leave it is refused by every operation."""
    location = Location(tmp_path / "store" / "inner")
    (tmp_path / "x").write_bytes(b"outside")
    for operation in (lambda: location.write_bytes(key, b"w"), lambda: location.read_bytes(key),
                      lambda: location.create_exclusive(key, b"w")):
        with pytest.raises(LogitcacheError, match="refused the object name"):
            operation()
    assert (tmp_path / "x").read_bytes() == b"outside" and sorted(p.name for p in tmp_path.rglob("*")) == ["x"]
