"""The storage backends, one module each, and the factory that picks one for a place.

  local.py    a folder (a plain path or file://), zarr's LocalStore
  fsspec.py   gs:// through gcsfs, s3:// through s3fs (the default s3 transport), zarr's FsspecStore
  obstore.py  s3:// through obstore, zarr's ObjectStore
  remote.py   what the object-store backends share: one Zarr store per place, the one-line errors

`as_location(where, options)` parses what the user typed and returns the backend's Location, carrying
its `StorageOptions`; without options it takes the process default (`set_default_options`: the CLI's
`--storage-option`s, or those a Ray worker gets from the driver). Every backend passes the one contract
test class, tests/store_contract.py::LocationTests (local disk, s3fs and obstore against a moto server).
"""
from __future__ import annotations

from pathlib import Path

from ..location import Location, StorageOptions, parse_place
from .fsspec import FsspecLocation, S3FsspecLocation
from .local import LocalLocation
from .obstore import ObstoreLocation

_DEFAULT = [StorageOptions()]  # the process default: one slot, replaced whole by set_default_options


def set_default_options(options: StorageOptions) -> None:
    """The options every location made without its own takes in this process (the CLI sets them once)."""
    _DEFAULT[0] = options


def default_options() -> StorageOptions:
    return _DEFAULT[0]


def location_class(protocol: str, options: StorageOptions) -> type[Location]:
    """The class for a place: s3:// takes the transport the options (or LOGITCACHE_STORAGE_BACKEND) choose."""
    if protocol == "file":
        return LocalLocation
    if protocol != "s3":
        return FsspecLocation
    return ObstoreLocation if options.transport() == "obstore" else S3FsspecLocation


def as_location(where: "str | Path | Location", options: StorageOptions | None = None) -> Location:
    """A path, a URL or a Location -> the backend's Location (a Location passes through unless other
    options are given)."""
    if isinstance(where, Location):
        if options is None or options == where.options:
            return where
        where = where.url
    options = default_options() if options is None else options
    protocol, path, url = parse_place(where)
    return location_class(protocol, options)(protocol, path, url, options)


__all__ = ["as_location", "default_options", "set_default_options", "location_class", "Location", "LocalLocation",
           "FsspecLocation", "S3FsspecLocation", "ObstoreLocation", "StorageOptions"]
