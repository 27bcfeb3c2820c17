import numpy as np
import pytest
import zarr

from logitcache import open_cache
from logitcache.cache import (LOG_LEVELS, SQRT_LEVELS, block_chunk_path, CacheLayout, CacheStore, create_cache, decode_ids, decode_probs, encode_ids,
                              encode_probs, log_step, verify_cache)
from logitcache.errors import LogitcacheError


def random_topk(rng, n=3, t=5, k=6, vocab=50):
    ids = np.stack([rng.choice(vocab, size=k, replace=False) for _ in range(n * t)]).reshape(n, t, k)
    logits = rng.normal(size=(n, t, vocab)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    top = np.take_along_axis(probs, ids, -1)
    order = np.argsort(-top, axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(top, order, -1).astype(np.float32)


def make_cache(path, ids, probs, prob_dtype="float32", block_rows=2, vocab=50):
    n, t, k = ids.shape
    layout = CacheLayout(n, t, k, vocab, block_rows, prob_dtype)
    create_cache(path, layout, {"kind": "cache", "temperature": 1.0})
    store = CacheStore(path, mode="r+")
    tokens = np.arange(n * t).reshape(n, t) % vocab
    for b in range(layout.n_blocks):
        s, e = layout.block_range(b)
        store.write_block(b, tokens[s:e], ids[s:e], probs[s:e])
    return tokens


def test_id_deltas_round_trip_exactly():
    rng = np.random.default_rng(0)
    ids, _ = random_topk(rng)
    deltas, order = encode_ids(ids, 50)
    assert deltas.dtype == np.uint16
    assert np.array_equal(decode_ids(deltas), np.take_along_axis(ids, order, -1))


@pytest.mark.parametrize("prob_dtype", list(LOG_LEVELS))
def test_log_codes_relative_error(prob_dtype):
    probs = np.exp(-np.linspace(0, 15.9, 1000)).astype(np.float32)
    decoded = decode_probs(encode_probs(probs, prob_dtype), prob_dtype)
    assert np.max(np.abs(np.log(decoded) - np.log(probs))) <= log_step(prob_dtype) / 2 + 1e-5


def test_cache_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(1)
    ids, probs = random_topk(rng, n=5)
    tokens = make_cache(tmp_path / "c.zarr", ids, probs, "float32")
    reader = open_cache(tmp_path / "c.zarr")
    got_tokens, got_ids, got_probs = reader.read(0, 5)
    assert got_tokens.dtype == np.int64 and got_ids.dtype == np.int64 and got_probs.dtype == np.float32
    assert np.array_equal(got_tokens, tokens)
    assert np.array_equal(got_ids, ids) and np.array_equal(got_probs, probs)
    # a range that straddles blocks
    _, mid_ids, mid_probs = reader.read(1, 4)
    assert np.array_equal(mid_ids, ids[1:4]) and np.array_equal(mid_probs, probs[1:4])
    assert len(reader) == 5 and reader.attrs["k"] == 6


def test_unsorted_block_read_holds_the_same_pairs(tmp_path):
    """The training loader skips the by-probability sort: same (id, prob) pairs, ids ascending."""
    rng = np.random.default_rng(2)
    ids, probs = random_topk(rng, n=4)
    make_cache(tmp_path / "c.zarr", ids, probs, "sqrt-u7")
    reader = open_cache(tmp_path / "c.zarr")
    _, by_prob_ids, by_prob_probs = reader.read_block(1)
    _, by_id_ids, by_id_probs = reader.read_block(1, by_prob=False)
    assert (np.diff(by_id_ids, axis=-1) > 0).all()
    order = np.argsort(by_prob_ids, axis=-1)
    assert np.array_equal(np.take_along_axis(by_prob_ids, order, -1), by_id_ids)
    assert np.array_equal(np.take_along_axis(by_prob_probs, order, -1), by_id_probs)


def test_store_opens_in_plain_zarr(tmp_path):
    rng = np.random.default_rng(2)
    ids, probs = random_topk(rng)
    make_cache(tmp_path / "c.zarr", ids, probs, "sqrt-u7")
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")  # plain zarr, no logitcache decoding
    attrs = group.attrs["logitcache"]
    assert attrs["encodings"]["topk_probs"].startswith("p = (float32(topk_probs) / 127) ** 2")
    plain_ids = np.cumsum(group["topk_ids"][:].astype(np.int64), axis=-1)  # the recipe for ids
    plain_probs = (group["topk_probs"][:].astype(np.float32) / 127) ** 2  # the recipe for probs
    order = np.argsort(-plain_probs, axis=-1, kind="stable")
    _, reader_ids, reader_probs = open_cache(tmp_path / "c.zarr").read(0, 3)
    assert np.array_equal(np.take_along_axis(plain_ids, order, -1), reader_ids)
    assert np.allclose(np.take_along_axis(plain_probs, order, -1), reader_probs)
    assert np.array_equal(np.sort(plain_ids, -1), np.sort(ids, -1))


def test_incomplete_and_foreign_stores_are_refused(tmp_path):
    layout = CacheLayout(4, 3, 2, 10, 2, "float16")
    create_cache(tmp_path / "c.zarr", layout, {"kind": "cache"})
    with pytest.raises(LogitcacheError, match="incomplete"):
        open_cache(tmp_path / "c.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(LogitcacheError, match="not a logitcache cache"):
        open_cache(tmp_path / "other.zarr")
    with pytest.raises(LogitcacheError, match="no cache"):
        open_cache(tmp_path / "missing.zarr")


def test_verify_finds_flipped_bytes(tmp_path):
    rng = np.random.default_rng(3)
    ids, probs = random_topk(rng, n=6)
    make_cache(tmp_path / "c.zarr", ids, probs, "float16")
    assert verify_cache(tmp_path / "c.zarr") == []
    chunk_file = block_chunk_path(tmp_path / "c.zarr", "topk_probs", 1)
    blob = bytearray(chunk_file.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    chunk_file.write_bytes(bytes(blob))
    problems = verify_cache(tmp_path / "c.zarr")
    assert len(problems) == 1 and problems[0].startswith("block 1")


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=150, deadline=None)
@given(vocab=st.integers(2, 400), k=st.integers(1, 64), seed=st.integers(0, 2**31 - 1),
       concentration=st.floats(0.01, 10.0), prob_dtype=st.sampled_from(["float32", "float16", "sqrt-u8", "sqrt-u7", "log-u8", "log-u7", "log-u6"]))
def test_encode_decode_property(vocab, k, seed, concentration, prob_dtype):
    """Any distribution, any k, every prob dtype: ids exact, probabilities within the stated tolerance."""
    k = min(k, vocab)
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(vocab, concentration), size=(2, 3)).astype(np.float32)  # (2, 3, V), zeros possible
    ids = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    probs = np.take_along_axis(p, ids, -1)
    deltas, order = encode_ids(ids, vocab)
    assert np.array_equal(decode_ids(deltas), np.take_along_axis(ids, order, -1))
    decoded = decode_probs(encode_probs(np.take_along_axis(probs, order, -1), prob_dtype), prob_dtype)
    original = np.take_along_axis(probs, order, -1)
    if prob_dtype == "float32":
        assert np.array_equal(decoded, original)
    elif prob_dtype == "float16":
        assert np.allclose(decoded, original, rtol=1e-3, atol=1e-7)
    elif prob_dtype in SQRT_LEVELS:  # sqrt(p) within half a code
        assert np.all(np.abs(np.sqrt(decoded) - np.sqrt(original)) <= 0.5 / SQRT_LEVELS[prob_dtype] + 1e-6)
    else:  # log codes: relative error within half a step above e^-16, clipped below
        step = log_step(prob_dtype)
        big = original > np.exp(-16.0 + step)
        assert np.all(np.abs(np.log(decoded[big]) - np.log(original[big])) <= step / 2 + 1e-4)
        assert np.all(decoded[~big] <= np.exp(-16.0 + 1.5 * step))
