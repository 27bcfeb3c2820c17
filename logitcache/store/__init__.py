"""The only package that touches Zarr: the token store, the cache store, its reader and verify.

  tokens.py   tokens.zarr (prepare writes it, every stage reads it)
  ids.py      kept ids as sorted gaps
  codecs/     one class per probability code (encode, decode, recipe, sum bound)
  cache.py    cache.zarr layout, creation, block writes, raw block reads
  reader.py   the public reader (open_cache)
  verify.py   verify (a cache or a data dir) and the inspect summary
"""
from .cache import (ATTRS_KEY, BASELINE_COMPRESSION, SCHEMA_VERSION, CacheLayout, Compression, CacheStore, block_checksum, block_chunk_path, create_cache,
                    decode_recipe, normalise_topk, same_attrs)
from .codecs import PROB_CODES, PROB_DTYPES, prob_code
from .ids import decode_ids, encode_ids, token_dtype
from .reader import CacheReader, open_cache
from .tokens import TokenStore, write_token_store
from .verify import cache_summary, check_decoded, is_data_location, verify_cache, verify_data

__all__ = [
    "ATTRS_KEY", "BASELINE_COMPRESSION", "Compression", "PROB_CODES", "PROB_DTYPES", "SCHEMA_VERSION", "CacheLayout", "CacheReader", "CacheStore", "TokenStore",
    "block_checksum", "block_chunk_path", "cache_summary", "check_decoded", "create_cache", "decode_ids",
    "decode_recipe", "encode_ids", "normalise_topk", "open_cache", "prob_code", "same_attrs", "token_dtype",
    "verify_cache", "verify_data", "is_data_location", "write_token_store",
]
