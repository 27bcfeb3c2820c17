import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache import open_cache
from logitcache.store import (PROB_CODES, READ_ONLY_CODES, Targets, CacheLayout, CacheStore, block_chunk_path, create_cache, decode_ids,
                              encode_ids, prob_code, verify_cache)
from logitcache.store.codecs import LogCode, SqrtCode
from logitcache.errors import LogitcacheError

EVERY_CODE = PROB_CODES | READ_ONLY_CODES  # a cache may hold a read-only code: its decoder is tested as the others


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
        store.write_block(b, Targets(tokens[s:e], ids[s:e], probs[s:e]))
    return tokens


def test_id_deltas_round_trip_exactly():
    rng = np.random.default_rng(0)
    ids, _ = random_topk(rng)
    deltas, order = encode_ids(ids, 50)
    assert deltas.dtype == np.uint16
    assert np.array_equal(decode_ids(deltas), np.take_along_axis(ids, order, -1))


@given(vocab=st.sampled_from([2, 50, 8000, 65536, 70000, 2**27, 2**31 - 1]), k=st.integers(1, 300),
       seed=st.integers(0, 2**31 - 1), repeats=st.booleans())
def test_encode_ids_order_is_the_stable_argsort(vocab, k, seed, repeats):
    """The packed sort gives the stable argsort's order and sorted ids, for any K, vocabularies past int32's
    packing range (int64) and repeated ids (sampled draws), where the slot order must break ties."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(vocab, 4 if repeats else vocab), size=(2, 3, k))
    gaps, order = encode_ids(ids, vocab)
    expected_order = np.argsort(ids, axis=-1, kind="stable")
    assert np.array_equal(order, expected_order)
    assert np.array_equal(decode_ids(gaps), np.sort(ids, axis=-1))


@pytest.mark.parametrize("prob_dtype", [n for n, c in EVERY_CODE.items() if isinstance(c, LogCode)])
def test_log_codes_relative_error(prob_dtype):
    code = prob_code(prob_dtype)
    probs = np.exp(-np.linspace(0, 15.9, 1000)).astype(np.float32)
    decoded = code.decode(code.encode(probs))
    assert np.max(np.abs(np.log(decoded) - np.log(probs))) <= code.step / 2 + 1e-5


@pytest.mark.parametrize("prob_dtype", [n for n, c in EVERY_CODE.items() if c.storage_dtype == np.uint8])
def test_code_lookup_table_equals_the_recipe_arithmetic(prob_dtype):
    """decode() uses a 256-entry table; it must equal the formula written in the attributes."""
    code = prob_code(prob_dtype)
    stored = np.arange(256, dtype=np.uint8)
    if isinstance(code, SqrtCode):
        expected = (stored.astype(np.float32) / code.levels) ** 2
    else:
        expected = np.exp(-stored.astype(np.float32) * code.step)
    assert np.allclose(code.decode(stored), expected, rtol=1e-6, atol=0)


def test_cache_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(1)
    ids, probs = random_topk(rng, n=5)
    tokens = make_cache(tmp_path / "c.zarr", ids, probs, "float32")
    reader = open_cache(tmp_path / "c.zarr")
    cached = reader.read(0, 5)
    got_tokens, got_ids, got_probs = cached.tokens, cached.ids, cached.probs
    assert got_tokens.dtype == np.int64 and got_ids.dtype == np.int64 and got_probs.dtype == np.float32
    assert np.array_equal(got_tokens, tokens)
    assert np.array_equal(got_ids, ids) and np.array_equal(got_probs, probs)
    # a range that straddles blocks
    cached = reader.read(1, 4)
    mid_ids, mid_probs = cached.ids, cached.probs
    assert np.array_equal(mid_ids, ids[1:4]) and np.array_equal(mid_probs, probs[1:4])
    assert len(reader) == 5 and reader.attrs["k"] == 6


def test_unsorted_block_read_holds_the_same_pairs(tmp_path):
    """The training loader skips the by-probability sort: same (id, prob) pairs, ids ascending."""
    rng = np.random.default_rng(2)
    ids, probs = random_topk(rng, n=4)
    make_cache(tmp_path / "c.zarr", ids, probs, "sqrt-u7")
    reader = open_cache(tmp_path / "c.zarr")
    cached = reader.read_block(1)
    by_prob_ids, by_prob_probs = cached.ids, cached.probs
    cached = reader.read_block(1, by_prob=False)
    by_id_ids, by_id_probs = cached.ids, cached.probs
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
    cached = open_cache(tmp_path / "c.zarr").read(0, 3)
    reader_ids, reader_probs = cached.ids, cached.probs
    assert np.array_equal(np.take_along_axis(plain_ids, order, -1), reader_ids)
    assert np.allclose(np.take_along_axis(plain_probs, order, -1), reader_probs)
    assert np.array_equal(np.sort(plain_ids, -1), np.sort(ids, -1))


def test_ids_above_65535_are_stored_as_uint32(tmp_path):
    rng = np.random.default_rng(7)
    ids, probs = random_topk(rng, n=4, vocab=70000)
    assert ids.max() > 65535
    make_cache(tmp_path / "c.zarr", ids, probs, "float32", vocab=70000)
    assert zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["topk_ids"].dtype == np.uint32
    cached = open_cache(tmp_path / "c.zarr").read(0, 4)
    got_ids, got_probs = cached.ids, cached.probs
    assert np.array_equal(got_ids, ids) and np.array_equal(got_probs, probs)


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


def test_recipe_states_the_normalisation_and_reader_follows_it(tmp_path):
    """A position whose codes decode above 1 is scaled back by the reader, and the recipe says so:
    a foreign reader following the recipe gets the reader's numbers and a tail >= 0."""
    ids = np.array([[[0, 1, 2, 3]]])  # (1, 1, 4)
    probs = np.array([[[0.26, 0.26, 0.24, 0.24]]], dtype=np.float32)  # sums to 1; sqrt-u7 rounds up
    make_cache(tmp_path / "c.zarr", ids, probs, "sqrt-u7", block_rows=1, vocab=10)
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    raw = (group["topk_probs"][:].astype(np.float32) / 127) ** 2
    assert raw.sum() > 1.0  # the case the recipe must cover
    recipe = group.attrs["logitcache"]["encodings"]
    assert "p /= s" in recipe["normalise"]
    followed = raw / raw.sum(-1, keepdims=True)  # the recipe's normalise step
    cached = open_cache(tmp_path / "c.zarr").read(0, 1)
    reader_ids, reader_probs = cached.ids, cached.probs
    order = np.argsort(reader_ids, axis=-1)
    assert np.allclose(np.take_along_axis(reader_probs, order, -1), followed, atol=1e-7)
    assert 1.0 - reader_probs.sum() >= -1e-6
    assert verify_cache(tmp_path / "c.zarr") == []  # within the code's bound


def test_verify_checks_raw_decoded_sums(tmp_path):
    """Codes that decode far above 1 (written with a valid checksum: a buggy writer) are reported;
    the reader's normalisation must not hide them from verify."""
    ids = np.array([[[0, 1, 2, 3]]])
    probs = np.array([[[0.25, 0.25, 0.25, 0.25]]], dtype=np.float32)
    make_cache(tmp_path / "c.zarr", ids, probs, "sqrt-u7", block_rows=1, vocab=10)
    store = CacheStore(tmp_path / "c.zarr", mode="r+")
    store.arrays["topk_probs"][0:1] = np.full((1, 1, 4), 127, np.uint8)  # four codes of p = 1
    stored = store.read_stored_block(0)
    from logitcache.store import block_checksum
    store.arrays["checksum"][0] = np.uint32(block_checksum(stored))
    problems = verify_cache(tmp_path / "c.zarr")
    assert len(problems) == 1 and "sum to 4.0000" in problems[0]


def test_read_returns_sampled_weights(tmp_path):
    rng = np.random.default_rng(5)
    ids, probs = random_topk(rng, n=3)
    weights = rng.uniform(0.1, 2.0, size=ids.shape).astype(np.float16)
    n, t, k = ids.shape
    layout = CacheLayout(n, t, k, 50, 2, "float32", with_weights=True)
    create_cache(tmp_path / "c.zarr", layout, {"kind": "cache"})
    store = CacheStore(tmp_path / "c.zarr", mode="r+")
    for b in range(layout.n_blocks):
        s, e = layout.block_range(b)
        store.write_block(b, Targets(np.zeros((e - s, t), np.int64), ids[s:e], probs[s:e], weights[s:e]))
    out = open_cache(tmp_path / "c.zarr").read(0, 3)
    assert out.weights is not None and out.mass_count is None and out.teacher_count is None
    got_ids, got_weights = out.ids, out.weights
    # each (id, weight) pair survives the id sort on write and the prob sort on read
    for pos in np.ndindex(n, t):
        written = dict(zip(ids[pos].tolist(), weights[pos].astype(np.float32).tolist()))
        assert dict(zip(got_ids[pos].tolist(), got_weights[pos].tolist())) == written




@settings(max_examples=150, deadline=None)
@given(vocab=st.integers(2, 400), k=st.integers(1, 64), seed=st.integers(0, 2**31 - 1),
       concentration=st.floats(0.01, 10.0), prob_dtype=st.sampled_from(list(EVERY_CODE)))
def test_encode_decode_property(vocab, k, seed, concentration, prob_dtype):
    """Any distribution, any k, every prob dtype: ids exact, probabilities within the stated tolerance."""
    k = min(k, vocab)
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(vocab, concentration), size=(2, 3)).astype(np.float32)  # (2, 3, V), zeros possible
    ids = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    probs = np.take_along_axis(p, ids, -1)
    deltas, order = encode_ids(ids, vocab)
    assert np.array_equal(decode_ids(deltas), np.take_along_axis(ids, order, -1))
    code = prob_code(prob_dtype)
    decoded = code.decode(code.encode(np.take_along_axis(probs, order, -1)))
    # the bound verify uses: an honest encode never decodes above it
    assert decoded.sum(-1).max() <= code.sum_bound(k)
    original = np.take_along_axis(probs, order, -1)
    if prob_dtype == "float32":
        assert np.array_equal(decoded, original)
    elif prob_dtype == "float16":
        assert np.allclose(decoded, original, rtol=1e-3, atol=1e-7)
    elif isinstance(code, SqrtCode):  # sqrt(p) within half a code
        assert np.all(np.abs(np.sqrt(decoded) - np.sqrt(original)) <= 0.5 / code.levels + 1e-6)
    else:  # log codes: relative error within half a step above e^-16, clipped below
        step = code.step
        big = original > np.exp(-16.0 + step)
        assert np.all(np.abs(np.log(decoded[big]) - np.log(original[big])) <= step / 2 + 1e-4)
        assert np.all(decoded[~big] <= np.exp(-16.0 + 1.5 * step))


def test_compression_per_array_and_chunks_too_big_for_blosc():
    """ids: byte-shuffled blosc over the whole chunk (one blosc block); probs: plain zstd; a chunk of 2 GiB
    or more, which blosc cannot take, falls back to plain zstd at blosc's zstd level (2c - 1)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    from logitcache.store.cache import Compression, _compressor

    ids = _compressor(Compression().ids, np.uint16, (256, 128, 32))
    assert isinstance(ids, BloscCodec) and ids.blocksize == 256 * 128 * 32 * 2 and ids.shuffle.value == "shuffle"
    assert isinstance(_compressor(Compression().probs, np.uint8, (256, 128, 32)), ZstdCodec)
    huge = _compressor(("blosc-chunk", 4), np.uint32, (4096, 2048, 64))  # 2 GiB
    assert isinstance(huge, ZstdCodec) and huge.level == 7


WIDE_LOG_CODES = [n for n, c in EVERY_CODE.items() if isinstance(c, LogCode) and c.storage_dtype == np.uint16]


def test_wide_log_codes_are_registered_as_16_bit():
    assert WIDE_LOG_CODES == ["log-s272", "log-u9", "log-u10", "log-u11", "log-u12", "log-u13"]
    for name in WIDE_LOG_CODES:
        code = prob_code(name)
        if "-u" in name:  # 2^B levels over 16 nats
            assert code.levels == 2 ** int(name.split("-u")[1]) and code.step == 16.0 / (code.levels - 1)
        else:  # a step of 1/N nat
            assert abs(code.step - 1 / int(name.split("-s")[1])) < 1e-15 and code.levels == 16 * 272 + 1


@pytest.mark.parametrize("prob_dtype", WIDE_LOG_CODES)
def test_wide_code_table_equals_the_recipe_arithmetic(prob_dtype):
    """Every code encode can produce decodes as the recipe's formula, computed in float64 here (float32's
    product code * step is within 1e-6 nats of it); codes above levels - 1 decode below e^-16."""
    code = prob_code(prob_dtype)
    stored = np.arange(code.levels, dtype=np.uint16)
    assert np.allclose(code.decode(stored), np.exp(-stored.astype(np.float64) * code.step), rtol=1e-5, atol=0)
    assert code.decode(np.arange(code.levels, 2**16, dtype=np.uint16)).max() < np.exp(-16.0)


@pytest.mark.parametrize("prob_dtype", WIDE_LOG_CODES)
def test_wide_log_codes_round_trip_through_plain_zarr(tmp_path, prob_dtype):
    """A cache with a 16-bit code: plain zarr sees uint16 codes, byte-shuffled before zstd; decoding them with
    numpy from the levels alone gives what the reader returns, within half a step of the written p in log
    space; verify passes."""
    from zarr.codecs import BloscCodec

    rng = np.random.default_rng(11)
    ids, probs = random_topk(rng, n=4, t=5, k=6)
    make_cache(tmp_path / "c.zarr", ids, probs, prob_dtype)
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    stored = group["topk_probs"][:]
    assert stored.dtype == np.uint16
    assert any(isinstance(c, BloscCodec) and c.shuffle.value == "shuffle" for c in group["topk_probs"].compressors)
    step = 16.0 / (2 ** int(prob_dtype.split("-u")[1]) - 1) if "-u" in prob_dtype else 1 / int(prob_dtype.split("-s")[1])
    independent = np.exp(-stored.astype(np.float64) * step)  # (N, T, K), ascending id order
    total = independent.sum(-1, keepdims=True)
    independent = np.where(total > 1, independent / total, independent)  # the recipe's normalise step
    id_order = np.cumsum(group["topk_ids"][:].astype(np.int64), axis=-1)
    cached = open_cache(tmp_path / "c.zarr").read(0, 4)
    got_ids, got_probs = cached.ids, cached.probs
    by_id = np.argsort(got_ids, axis=-1)
    assert np.array_equal(np.take_along_axis(got_ids, by_id, -1), id_order)
    assert np.allclose(np.take_along_axis(got_probs, by_id, -1), independent, rtol=1e-5, atol=0)
    written = np.take_along_axis(probs, np.argsort(ids, axis=-1), -1)  # the true p in ascending id order
    assert np.all(np.abs(np.log(independent * np.where(total > 1, total, 1)) - np.log(written)) <= step / 2 + 1e-5)
    assert verify_cache(tmp_path / "c.zarr") == []


@pytest.mark.parametrize("prob_dtype", ["log-u9", "log-u12", "log-s272", "log-u13"])
def test_log_code_kl_after_renormalising_is_about_step_squared_over_24(prob_dtype):
    """The fidelity the README quotes: KL(true top-k renormalised || decoded renormalised) per position is about
    step^2 / 24 (uniform rounding of log p; the common shift cancels), computed here without the code's tables."""
    code = prob_code(prob_dtype)
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(2000, 0.05), size=4000)  # (4000, V)
    top = -np.sort(-p, axis=-1)[:, :32]  # (4000, 32)
    decoded = np.exp(-code.encode(top.astype(np.float32)).astype(np.float64) * code.step)
    big = top.min(-1) > np.exp(-15.0)  # positions without clipped entries
    true, q = top / top.sum(-1, keepdims=True), decoded / decoded.sum(-1, keepdims=True)
    kl = (true * np.log(true / q)).sum(-1)[big].mean()
    assert big.mean() > 0.5 and 0.85 * code.step ** 2 / 24 <= kl <= 1.05 * code.step ** 2 / 24
