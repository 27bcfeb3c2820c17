"""The only package that touches Zarr: the token store, the cache store, its reader and verify.

  tokens.py   tokens.zarr (prepare writes it, every stage reads it)
  ids.py      kept ids as sorted gaps
  codecs/     one class per probability code (encode, decode, recipe, sum bound)
  cache.py    cache.zarr layout, creation, block writes, raw block reads
  reader.py   the public reader (open_cache)
  verify.py   verify (a cache or a data dir) and the inspect summary
  location.py the storage protocol (Location), StorageOptions, the rules for object names
  backends/   one module per storage backend (local, fsspec, obstore) and the factory as_location
"""
import importlib

# name -> the submodule defining it, imported on first use (PEP 562): `logitcache.store.codecs` (whose
# names the CLI's choices derive from) then loads without zarr, and `logitcache --help` never pays for it
_EXPORTS = {
    "cache": ("ATTRS_KEY", "BASELINE_COMPRESSION", "SCHEMA_VERSION", "Targets", "CacheLayout", "Compression", "CacheStore",
              "block_checksum", "block_chunk_path", "create_cache", "decode_recipe", "normalise_topk", "same_attrs"),
    "codecs": ("PROB_CODES", "PROB_DTYPES", "READ_ONLY_CODES", "prob_code"),
    "ids": ("decode_ids", "encode_ids", "token_dtype"),
    "reader": ("CacheReader", "open_cache"),
    "tokens": ("TokenStore", "write_token_store"),
    "verify": ("cache_summary", "check_decoded", "is_data_location", "verify_cache", "verify_data"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ATTRS_KEY", "BASELINE_COMPRESSION", "Targets", "Compression", "PROB_CODES", "PROB_DTYPES", "READ_ONLY_CODES", "SCHEMA_VERSION", "CacheLayout", "CacheReader", "CacheStore", "TokenStore",
    "block_checksum", "block_chunk_path", "cache_summary", "check_decoded", "create_cache", "decode_ids",
    "decode_recipe", "encode_ids", "normalise_topk", "open_cache", "prob_code", "same_attrs", "token_dtype",
    "verify_cache", "verify_data", "is_data_location", "write_token_store",
]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
