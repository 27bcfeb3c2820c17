"""The contract every storage backend keeps, as one test class each backend's test subclasses (as
zarr-python's `testing/store.py::StoreTests`): a subclass names its Location class and options, gives a
fresh place (`place` fixture) and writes and reads objects around the backend (`raw_put`, `raw_get`) so
the backend's own reads and writes are checked against an independent route."""
from __future__ import annotations

import pickle

import pytest

from logitcache.errors import LogitcacheError
from logitcache.store.backends import as_location
from logitcache.store.cache import CREATING, delete_cache
from logitcache.store.location import StorageOptions

UNSAFE_KEYS = ["../x", "a/../../x", "/etc/x", "a\\..\\x", "a/./b", "a//b", "", "x\0y"]


class LocationTests:
    location_cls: type
    options = StorageOptions()

    @pytest.fixture
    def place(self) -> str:
        """A fresh, empty place for this backend (a folder path or a URL)."""
        raise NotImplementedError

    def raw_put(self, place: str, key: str, data: bytes) -> None:
        """Write an object under `place` without the backend."""
        raise NotImplementedError

    def raw_get(self, place: str, key: str) -> bytes | None:
        """Read an object under `place` without the backend (None when absent)."""
        raise NotImplementedError

    @pytest.fixture
    def location(self, place):
        return as_location(place, self.options)

    def test_the_factory_gives_this_backend_with_its_options(self, location, place):
        assert type(location) is self.location_cls and location.options == self.options
        again = pickle.loads(pickle.dumps(location))  # a worker gets the same place, transport and options
        assert type(again) is self.location_cls and again == location and again.options == self.options
        child = location.child("x")
        assert type(child) is self.location_cls and child.options == self.options
        assert str(child) == f"{str(location).rstrip('/')}/x" and as_location(location) is location

    @pytest.mark.parametrize("key", ["zarr.json", "done/c/3", "a/b/c.d"])
    @pytest.mark.parametrize("data", [b"", b"\x00\xff" * 300])
    def test_write_read_roundtrip_through_another_route(self, location, place, key, data):
        location.write_bytes(key, data)
        assert self.raw_get(place, key) == data and location.read_bytes(key) == data
        self.raw_put(place, key, data[::-1] + b"!")
        assert location.read_bytes(key) == data[::-1] + b"!"

    def test_a_missing_object_reads_as_none(self, location):
        assert location.read_bytes("zarr.json") is None and location.read_bytes("a/b") is None

    def test_create_exclusive_is_taken_once_and_keeps_the_first_bytes(self, location, place):
        assert location.create_exclusive("zarr.json", b"first")
        assert not location.create_exclusive("zarr.json", b"second")
        assert self.raw_get(place, "zarr.json") == b"first"
        self.raw_put(place, "other.json", b"theirs")
        assert not location.create_exclusive("other.json", b"mine") and location.read_bytes("other.json") == b"theirs"

    def test_sizes_and_exists(self, location, place):
        assert location.sizes() == {} and not location.exists()
        location.write_bytes("zarr.json", b"12345")
        self.raw_put(place, "done/c/0", b"\x01")
        assert location.sizes() == {"zarr.json": 5, "done/c/0": 1} and location.exists()

    def test_delete_all_removes_this_place_and_nothing_beside_it(self, location, place):
        """A sibling whose name starts with this place's (`c` and `c2`) and the parent keep their objects."""
        sibling, parent = as_location(place + "2", self.options), as_location(place.rsplit("/", 1)[0], self.options)
        sibling.write_bytes("zarr.json", b"sibling")
        parent.write_bytes("beside.txt", b"parent")
        for key in ("zarr.json", "done/c/0", "topk_ids/c/0/0/0"):
            location.write_bytes(key, b"x")
        location.delete_all()
        assert location.sizes() == {} and not location.exists() and location.read_bytes("zarr.json") is None
        assert sibling.read_bytes("zarr.json") == b"sibling" and parent.read_bytes("beside.txt") == b"parent"

    @pytest.mark.parametrize("key", UNSAFE_KEYS)
    def test_an_unsafe_key_is_refused_by_every_operation(self, location, key):
        parent = as_location(str(location).rsplit("/", 1)[0], self.options)
        before = parent.sizes()
        for operation in (lambda: location.write_bytes(key, b"w"), lambda: location.read_bytes(key),
                          lambda: location.create_exclusive(key, b"w")):
            with pytest.raises(LogitcacheError, match="refused the object name"):
                operation()
        assert parent.sizes() == before

    def test_the_overwrite_guard_replaces_a_cache_and_nothing_else(self, location, place):
        """`cache.delete_cache` (dump --overwrite): a cache or a claim goes whole; a claim beside a foreign
        object, a store of another kind or the parent of a cache is refused in one line naming what is
        there, every object kept."""
        root = '{"zarr_format": 3, "node_type": "group", "attributes": {"logitcache": {"kind": "%s"}}}'
        for name, kind in (("claim", CREATING), ("cache", "cache"), ("other", "tokens")):
            self.raw_put(place, f"{name}/zarr.json", (root % kind).encode())
            self.raw_put(place, f"{name}/done/c/0", b"\x01")
        self.raw_put(place, "claim/notes.txt", b"mine")
        before = {key: location.read_bytes(key) for key in location.sizes()}
        for where, named in (("claim", "notes.txt"), ("other", "kind 'tokens'"), ("", "cache/")):
            with pytest.raises(LogitcacheError, match=f"{named}.*not replaced"):
                delete_cache(location.child(where) if where else location)
        assert {key: location.read_bytes(key) for key in location.sizes()} == before
        delete_cache(location.child("cache"))
        assert {k: v for k, v in before.items() if not k.startswith("cache/")} == {
            key: location.read_bytes(key) for key in location.sizes()}
        self.raw_put(place, "claim/notes.txt", b"")  # still foreign: refused whatever it holds
        with pytest.raises(LogitcacheError, match="notes.txt"):
            delete_cache(location.child("claim"))
