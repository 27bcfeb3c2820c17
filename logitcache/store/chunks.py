"""A block's chunks encoded here, byte for byte as zarr's codec pipeline encodes them, and stored whole.

Every block array holds one chunk per block (coordinates (block, 0, ...)), and a block is written whole,
so the writer needs none of zarr's per-write machinery: the selection-to-chunk mapping, the copy into a
fresh chunk buffer, the pass over each chunk for "all fill value?", and the hop through its event loop
and thread pool per codec (together about a fifth of the writer's CPU on the demo's blocks). ChunkEncoder
reads the array's own Zarr metadata (chunk shape, fill value, chunk key, codecs) and runs the same numcodecs
compressor zarr would, with the same configuration, so plain zarr reads the chunk as if it had written it
(tests/test_chunks.py compares every stored object against zarr's own write). An array whose codecs are
not the ones a cache is created with (bytes, then one blosc or zstd) has no encoder: it goes through zarr.

`concurrently` stores those chunks and runs the other arrays' reads and writes at once (one round trip to
object storage). zarr's synchronous API has no such batch, so it alone reaches zarr's internals
(Array._async_array, zarr.core.sync.sync), checked against ZARR_CHECKED: tests/test_chunks.py fails on any
other zarr until it is checked again.
"""
from __future__ import annotations

import asyncio
import sys

import numpy as np
from numcodecs import Blosc, Zstd

BLOSC_SHUFFLES = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
ZARR_CHECKED = "3.1.6"  # the zarr whose internals `concurrently` uses and whose chunks ChunkEncoder matches


def concurrently(store, puts: dict, calls: list[tuple]) -> list:
    """Store `puts` ({key: zarr Buffer}) into `store` and run `calls` ([(zarr.Array, "getitem" | "setitem",
    args)]) all at once on zarr's event loop; the calls' results, in order."""
    from zarr.core.sync import sync

    async def run():
        done = await asyncio.gather(*(store.set(key, data) for key, data in puts.items()),
                                    *(getattr(array._async_array, method)(*args) for array, method, args in calls))
        return done[len(puts):]

    return sync(run())


def compressor_of(codecs) -> "Blosc | Zstd | None":
    """The numcodecs compressor equal to a [bytes (little-endian), blosc | zstd] codec chain; else None."""
    if len(codecs) != 2 or sys.byteorder != "little":
        return None
    serializer, compressor = (codec.to_dict() for codec in codecs)
    endian = (serializer.get("configuration") or {}).get("endian", "little")
    if serializer["name"] != "bytes" or endian not in (None, "little"):
        return None
    config = dict(compressor.get("configuration") or {})
    if compressor["name"] == "zstd":
        return Zstd(level=config["level"], checksum=config.get("checksum", False))
    if compressor["name"] == "blosc":
        return Blosc.from_config({"cname": config["cname"], "clevel": config["clevel"], "typesize": config["typesize"],
                                  "shuffle": BLOSC_SHUFFLES[config["shuffle"]], "blocksize": config["blocksize"]})
    return None


class ChunkEncoder:
    """Encodes one array's block chunk as zarr would store it: padded to the chunk shape with the fill
    value (a last, shorter block), C order, then compressed."""

    def __init__(self, array, compressor):
        meta = array.metadata
        self.path = array.path
        self.meta = meta
        self.chunk_shape = tuple(meta.chunks)
        self.dtype = np.dtype(array.dtype)
        self.fill_value = meta.fill_value
        self.compressor = compressor

    @classmethod
    def of(cls, array) -> "ChunkEncoder | None":
        compressor = compressor_of(array.metadata.codecs)
        return None if compressor is None else cls(array, compressor)

    def key(self, block: int) -> str:
        """The block's chunk key under the store's root, e.g. "topk_ids/c/3/0/0"."""
        coords = (block,) + (0,) * (len(self.chunk_shape) - 1)
        return f"{self.path}/{self.meta.encode_chunk_key(coords)}"

    def encode(self, values: np.ndarray) -> bytes:
        values = np.asarray(values, dtype=self.dtype)
        if values.shape != self.chunk_shape:  # the last block: zarr stores the whole chunk, the rest fill
            chunk = np.full(self.chunk_shape, self.fill_value, dtype=self.dtype)
            chunk[tuple(slice(0, n) for n in values.shape)] = values
            values = chunk
        return bytes(self.compressor.encode(np.ascontiguousarray(values).view(np.uint8).reshape(-1)))
