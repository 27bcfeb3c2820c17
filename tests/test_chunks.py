"""The writer's own chunk encoding (store/chunks.py) stores exactly what zarr's codec pipeline stores."""
from pathlib import Path

import numpy as np
import pytest
import zarr

from logitcache.store import (BASELINE_COMPRESSION, Targets, CacheLayout, CacheStore, Compression, create_cache,
                              verify_cache)
from logitcache.store.chunks import ChunkEncoder

LAYOUTS = {  # (layout, compression): every kind of block array, a shorter last block in each
    "topk sqrt-u7": (CacheLayout(5, 7, 6, 300, 2, "sqrt-u7"), Compression()),
    "topk log-u12, ids over 65535": (CacheLayout(5, 7, 6, 70_000, 2, "log-u12"), Compression()),
    "sampled float16 weights": (CacheLayout(5, 7, 6, 300, 2, "float32", with_weights=True), Compression()),
    "mass": (CacheLayout(5, 7, 6, 300, 2, "sqrt-u7", ragged=True), Compression()),
    "other tokenizer (teacher_count)": (CacheLayout(5, 7, 6, 300, 2, "sqrt-u8", with_teacher_count=True), Compression()),
    "mass, other tokenizer": (CacheLayout(5, 7, 6, 300, 2, "sqrt-u7", with_teacher_count=True, ragged=True), Compression()),
    "baseline blosc small blocks": (CacheLayout(5, 7, 6, 300, 2, "sqrt-u7"), BASELINE_COMPRESSION),
    "plain zstd": (CacheLayout(5, 7, 6, 300, 2, "float16"), Compression(("zstd", 10), ("zstd", 10), ("zstd", 5))),
}


def block_data(layout: CacheLayout, block: int, rng) -> Targets:
    start, stop = layout.block_range(block)
    n, t, k = stop - start, layout.seq_len, layout.k
    ids = np.stack([rng.choice(layout.vocab_size, size=k, replace=False) for _ in range(n * t)]).reshape(n, t, k)
    probs = rng.dirichlet(np.ones(k) * 0.3, size=(n, t)).astype(np.float32)  # (n, T, K)
    probs = -np.sort(-probs, axis=-1)
    tokens = rng.integers(0, layout.vocab_size, size=(n, t))
    extra = {}
    if layout.with_weights:
        extra["weights"] = rng.uniform(0, 2, size=(n, t, k)).astype(np.float32)
    if layout.ragged:
        extra["mass_count"] = rng.integers(1, k + 1, size=(n, t))
    if layout.with_teacher_count:
        extra["teacher_count"] = rng.integers(1, 3, size=(n, t))  # of the 2 teachers in the attributes
    return Targets(tokens, ids, probs, **extra)


def write(path: Path, layout: CacheLayout, compression: Compression, through_zarr: bool) -> None:
    create_cache(path, layout, {"kind": "cache", "temperature": 1.0, "teachers": ["a", "b"]}, compression=compression)
    store = CacheStore(path, mode="r+")
    if through_zarr:  # the reference: zarr's own setitem for every array
        store.encoders = {}
    else:
        assert all(store.encoders[name] is not None for name in layout.block_arrays)
    rng = np.random.default_rng(0)
    for block in range(layout.n_blocks):
        store.write_block(block, block_data(layout, block, rng))


def stored_objects(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_stored_object_equals_zarrs_own_write(tmp_path, name):
    layout, compression = LAYOUTS[name]
    write(tmp_path / "direct.zarr", layout, compression, through_zarr=False)
    write(tmp_path / "zarr.zarr", layout, compression, through_zarr=True)
    direct, reference = stored_objects(tmp_path / "direct.zarr"), stored_objects(tmp_path / "zarr.zarr")
    assert direct.keys() == reference.keys()
    assert any("/c/" in key for key in direct)  # chunks, not only metadata
    for key in reference:
        assert direct[key] == reference[key], key
    # and plain zarr reads the directly written arrays as they were given (the last block's padding dropped)
    group = zarr.open_group(str(tmp_path / "direct.zarr"), mode="r")
    rng = np.random.default_rng(0)  # the same draws as write()
    tokens = np.concatenate([block_data(layout, b, rng).tokens for b in range(layout.n_blocks)])
    np.testing.assert_array_equal(group["tokens"][:], tokens)
    assert verify_cache(tmp_path / "direct.zarr") == []


def test_an_array_with_other_codecs_has_no_encoder(tmp_path):
    """Codecs a cache is never created with (here: a transpose before the bytes) fall back to zarr."""
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 3), chunks=(2, 3), dtype=np.uint16,
                              filters=[zarr.codecs.TransposeCodec(order=(1, 0))], compressors=zarr.codecs.ZstdCodec())
    assert ChunkEncoder.of(array) is None
    plain = zarr.create_array(str(tmp_path / "b.zarr"), shape=(4, 3), chunks=(2, 3), dtype=np.uint16,
                              compressors=zarr.codecs.ZstdCodec(level=4))
    assert ChunkEncoder.of(plain) is not None


@pytest.mark.parametrize("name", LAYOUTS)
def test_raw_bytes_per_token_counts_every_target_array(tmp_path, name):
    """cache_summary's raw size against plain zarr's arrays: every target array's uncompressed bytes (a ragged
    array's kept entries only, by its stored counts) per token, the same arrays bytes_per_token sums on disk."""
    from logitcache.store import cache_summary

    layout, compression = LAYOUTS[name]
    write(tmp_path / "c.zarr", layout, compression, through_zarr=False)
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    kept = int(group["mass_count"][:].sum()) if layout.ragged else None
    raw = 0
    for array_name in set(group.array_keys()) - {"tokens", "done", "checksum"}:
        array = group[array_name]
        entries = kept if array_name in ("mass_ids", "mass_probs") else int(np.prod(array.shape))
        raw += entries * array.dtype.itemsize
    summary = cache_summary(tmp_path / "c.zarr")
    assert summary["raw_bytes_per_token"] == pytest.approx(raw / (layout.n_rows * layout.seq_len))


def test_the_zarr_internals_were_checked_against_this_zarr():
    """store/chunks.concurrently reaches zarr's internals (Array._async_array, zarr.core.sync.sync) and
    ChunkEncoder matches its chunk encoding: on another zarr, check both again (the test above compares every
    stored object with zarr's own write) and update ZARR_CHECKED."""
    from logitcache.store.chunks import ZARR_CHECKED

    assert zarr.__version__ == ZARR_CHECKED, (
        f"zarr {zarr.__version__} is installed; store/chunks.py was checked against zarr {ZARR_CHECKED}")
