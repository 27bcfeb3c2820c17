"""Teachers with tokenizers of their own: the data's text record, alignment, mapping and the cache.

Tokenizers are trained in-process: the data's byte-level BPE (prepare's), and teachers' (a) byte-level
BPE of another size, (b) Metaspace BPE with byte fallback (Llama-2 style), (c) unigram. The reference
test recomputes every target with a plain loop over `model(x).logits` of each teacher's own tokenization,
deriving boundaries by decoding prefixes, independent of logitcache/teachers/align.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_lines

# text with unicode, tabs, runs of spaces and newlines inside documents (prepare keeps them: one document
# per line, so the newlines sit inside Shakespeare-style blocks)
ODD_LINES = ["Crème brûlée,\tnaïve café.", "Tokyo: 東京タワー!  Two  spaces,\t\ttwo tabs.", "She said —   «oui».",
             "The Ωmega and ∑igma.", "Ça va? Très bien…"]


def odd_corpus(root: Path) -> Path:
    """The BabyLM layout with a Shakespeare-style source (blank-line blocks, newlines kept inside)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "dev", "test")):
        lines = synthetic_lines(300 if split == "train" else 60, 30 + i)
        blocks = []
        for j in range(0, len(lines), 3):
            odd = ODD_LINES[(j // 3) % len(ODD_LINES)]
            blocks.append("\n".join(lines[j:j + 3]) + "\n" + odd)
        (root / f"shakespeare.{split}").write_text("\n\n".join(blocks) + "\n")
        (root / f"stories.{split}").write_text("\n".join(lines) + "\n")
    return root


TRAIN_TEXT = [line for i in range(300) for line in synthetic_lines(1, i)] + ODD_LINES * 2


def teacher_byte_level():
    """(a) GPT-2-style byte-level BPE of another size (no BOS: GPT-2's <|endoftext|> only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(TRAIN_TEXT, trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tokenizer


def teacher_metaspace():
    """(b) Llama-2 style: BPE over ▁-words with <0xNN> byte fallback, Prepend/Replace normalizer, <s> template."""
    from logitcache.data.tokenizer import train_metaspace_bpe

    return train_metaspace_bpe([t for t in TRAIN_TEXT if "東" not in t], 200)


def teacher_unigram():
    """(c) unigram over Metaspace words (every character of the corpus in its vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(TRAIN_TEXT * 2, trainers.UnigramTrainer(
        vocab_size=180, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    return tokenizer


def teacher_lowercase():
    """A lossy tokenizer: (a) behind a lowercasing normalizer."""
    from tokenizers import normalizers

    tokenizer = teacher_byte_level()
    tokenizer.normalizer = normalizers.Lowercase()
    return tokenizer


TEACHER_TOKENIZERS = {"byte-level": teacher_byte_level, "metaspace": teacher_metaspace, "unigram": teacher_unigram}


# --- the data's text record -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    from logitcache.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("cross")
    out = root / "data"
    prepare(PrepareConfig(data=odd_corpus(root / "raw"), out=out, vocab_size=300, seq_len=32))
    return out


def token_pieces(data_dir: Path, split: str) -> tuple[np.ndarray, list[bytes]]:
    """The split's tokens (N*T,) and the bytes of the text record each one covers."""
    from logitcache.data.prepared import load_data

    store = load_data(data_dir).store
    text, ends = store.split_text(split)
    starts = np.concatenate([[0], ends[:-1]])
    return store.split(split).reshape(-1), [bytes(text[s:e]) for s, e in zip(starts, ends)]


def byte_level_bytes(token: str) -> bytes:
    """GPT-2's bytes_to_unicode inverted, written out here (independent of logitcache.data.tokenizer)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return bytes(table[c] for c in token)


def test_the_record_spells_each_token_of_the_trained_bpe(odd_data):
    from logitcache.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(odd_data / "tokenizer.json")
    for split in ("train", "dev"):
        ids, pieces = token_pieces(odd_data, split)
        specials = {0, 1, 2}
        for token_id, piece in zip(ids.tolist(), pieces):
            expected = b"" if token_id in specials else byte_level_bytes(tokenizer.id_to_token(token_id))
            assert piece == expected, (split, token_id, piece)
    raw = (odd_data.parent / "raw" / "shakespeare.train").read_text()
    from logitcache.data.prepared import load_data

    text, _ = load_data(odd_data).store.split_text("train")
    assert "Crème brûlée,\tnaïve café.".encode() in bytes(text) and "\n" in raw


@pytest.mark.parametrize("kind", ["metaspace", "unigram"])
def test_the_record_of_another_tokenizer_holds_its_tokens_bytes(tmp_path, odd_data, kind):
    """prepare --tokenizer (a Metaspace BPE with byte fallback, a unigram): each token covers the bytes it
    spells (a byte-fallback <0xNN> piece of a character its one byte); the prefix space at a document start
    is no text; a <unk> covers the characters it replaced."""
    from logitcache.prepare import PrepareConfig, prepare

    tokenizer = TEACHER_TOKENIZERS[kind]()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "data"
    prepare(PrepareConfig(data=odd_data.parent / "raw", out=out, tokenizer=tmp_path / "tokenizer.json", seq_len=32))
    ids, pieces = token_pieces(out, "train")
    byte_pieces = 0
    for i, (token_id, piece) in enumerate(zip(ids.tolist(), pieces)):
        spelled = reference_bytes(tokenizer, token_id)
        if token_id == tokenizer.token_to_id("<unk>"):  # a character the vocabulary lacks ("\n", 東)
            assert len(piece) > 0
        elif spelled is None:
            assert piece == b""
        else:
            byte_pieces += len(spelled) == 1 and spelled[0] >= 0x80  # a byte-fallback piece of a character
            assert piece in (spelled, spelled[1:]), (i, tokenizer.id_to_token(token_id), piece)
    assert byte_pieces > 0 or kind == "unigram"


def test_verify_data_checks_the_text_record(tmp_path, odd_data):
    import shutil

    import zarr

    from logitcache.data.prepared import load_data
    from logitcache.store import verify_data

    assert verify_data(odd_data)["problems"] == []
    copy = tmp_path / "data"
    shutil.copytree(odd_data, copy)
    array = zarr.open_array(str(copy / "tokens.zarr" / "text" / "train_bytes"), mode="r+")
    array[5] = (int(array[5]) + 1) % 256
    problems = verify_data(copy)["problems"]
    assert any("text/train_bytes chunk 0: checksum mismatch" in p for p in problems), problems
    from logitcache.errors import LogitcacheError

    with pytest.raises(LogitcacheError, match="text/train_bytes chunk 0: checksum mismatch"):
        load_data(copy).store.split_text("train")


# --- teachers ------------------------------------------------------------------------------------------------------

def teacher_folder(root: Path, name: str, tokenizer, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny random-init teacher saved with its tokenizer.json (no tokenizer_config: specials by name)."""
    from logitcache.teachers.models import build_model, get_preset
    from logitcache.data.tokenizer import special_ids

    folder = root / name
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    specials = special_ids(tokenizer)
    model = build_model(get_preset(f"{arch}-tiny"), vocab, seed=seed,
                        specials={"bos": specials["bos"], "eos": specials["eos"], "pad": specials["pad"]})
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, odd_data) -> dict[str, Path]:
    from logitcache.data.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("cross-teachers")
    out = {"byte-level": teacher_folder(root, "gpt2-bytes", teacher_byte_level(), "gpt2", 1),
           "metaspace": teacher_folder(root, "llama-metaspace", teacher_metaspace(), "llama", 2),
           "unigram": teacher_folder(root, "llama-unigram", teacher_unigram(), "llama", 3),
           "lowercase": teacher_folder(root, "gpt2-lower", teacher_lowercase(), "gpt2", 4),
           "same": teacher_folder(root, "llama-same", load_tokenizer(odd_data / "tokenizer.json"), "llama", 5)}
    return out


# --- the independent reference ----------------------------------------------------------------------------------

STUDENT_BOS, STUDENT_EOS = 1, 2  # prepare's trained BPE: <pad>=0, <s>=1, </s>=2


def reference_bytes(tokenizer, token_id: int) -> bytes | None:
    """A token's bytes mid-text, written out here: byte-level through the test's own table, <0xNN> as that
    byte, ▁ as a space; None for special tokens."""
    import re

    token = tokenizer.id_to_token(token_id)
    added = tokenizer.get_added_tokens_decoder()
    if token_id in added and added[token_id].special:
        return None
    if json.loads(tokenizer.to_str())["decoder"]["type"] == "ByteLevel":
        return byte_level_bytes(token)
    if re.fullmatch(r"<0x[0-9A-F]{2}>", token):
        return bytes([int(token[3:5], 16)])
    return token.replace("▁", " ").encode()


def whole_chars(seg: bytes) -> tuple[int, int]:
    """The longest run of whole characters: leading continuation bytes dropped, then the end shortened
    until the bytes decode."""
    lo = 0
    while lo < len(seg) and seg[lo] & 0xC0 == 0x80:
        lo += 1
    for hi in range(len(seg), lo - 1, -1):
        try:
            seg[lo:hi].decode("utf-8")
            return lo, hi
        except UnicodeDecodeError:
            continue
    return lo, lo


def reference_targets(data_dir: Path, teacher_dirs: list[Path], temperature: float, n_rows: int, weights=None):
    """Dense (N, T, V) combined targets and teacher counts (N, T), by plain loops over model(x).logits
    (test_alignment.reference_cache)."""
    from test_alignment import reference_cache

    rows, dense, count, _ = reference_cache(data_dir, teacher_dirs, temperature, n_rows, weights)
    return rows, dense, count


@pytest.mark.parametrize("kinds", [("byte-level", "metaspace", "unigram", "same"), ("metaspace",)])
def test_the_cache_equals_an_independent_reference(tmp_path, odd_data, teachers, kinds):
    from conftest import dump_config
    from logitcache import open_cache
    from logitcache.dump import dump

    dirs = [teachers[k] for k in kinds]
    out = tmp_path / "cache.zarr"
    n_rows = 48
    dump(dump_config(odd_data, dirs, out, combine="mean-probs", top_k=300, prob_dtype="float32", max_chunks=n_rows,
                     min_coverage=0.2, batch_size=5))
    rows, expected, expected_count = reference_targets(odd_data, dirs, 2.0, n_rows)
    reader = open_cache(out)
    cached = reader.read(0, n_rows)
    tokens, ids, probs = cached.tokens, cached.ids, cached.probs
    dense = np.zeros(expected.shape, dtype=np.float64)
    np.put_along_axis(dense, ids, probs, -1)
    assert np.array_equal(tokens, rows.astype(np.int64))
    count = cached.teacher_count
    assert np.array_equal(count, expected_count)
    assert 0 < (count < len(kinds)).mean() < 1 and (count > 0).mean() > 0.5  # alignment is partial, not absent
    assert np.abs(dense - expected).max() <= 1e-5
    mapped = probs.sum(-1)[count > 0]
    assert (mapped < 1 - 1e-3).any() and (mapped <= 1 + 1e-5).all()  # unmapped mass is the tail, kept out
    # the chunks cut words and carry the odd text
    text = b"".join(b"" if x < 3 else byte_level_bytes(load_student(odd_data).id_to_token(x)) for x in rows.reshape(-1))
    assert b"\t" in text and b"  " in text and "東".encode() in text and b"\n" in text


def test_teacher_weights_weigh_the_aligned_teachers(tmp_path, odd_data, teachers):
    """--teacher-weights 3,1: at each position the mean of the aligned teachers' mapped distributions with
    those weights (where only the second is aligned, its distribution alone)."""
    from conftest import dump_config
    from logitcache import open_cache
    from logitcache.dump import dump

    dirs, n_rows = [teachers["same"], teachers["metaspace"]], 24
    out = tmp_path / "weighted.zarr"
    dump(dump_config(odd_data, dirs, out, combine="mean-probs", top_k=300, prob_dtype="float32", max_chunks=n_rows,
                     min_coverage=0.2, batch_size=5, teacher_weights=(3.0, 1.0)))
    _, expected, _ = reference_targets(odd_data, dirs, 2.0, n_rows, weights=[3.0, 1.0])
    _, unweighted, _ = reference_targets(odd_data, dirs, 2.0, n_rows)
    cached = open_cache(out).read(0, n_rows)
    ids, probs = cached.ids, cached.probs
    dense = np.zeros(expected.shape, dtype=np.float64)
    np.put_along_axis(dense, ids, probs, -1)
    assert np.abs(dense - expected).max() <= 1e-5
    assert np.abs(dense - unweighted).max() > 1e-3  # the weights change the targets


def test_the_mixed_path_splits_batches_by_the_logit_budget(tmp_path, odd_data, teachers, monkeypatch):
    """A 1 MB budget runs each batch in slices of a few rows: the cache is the same bytes as unsplit."""
    from conftest import dump_config
    from logitcache.dump import dump
    from logitcache.teachers.mixed import MixedEnsemble

    dirs = [teachers["same"], teachers["unigram"]]
    caches, slices = [], []
    real = MixedEnsemble._targets
    monkeypatch.setattr(MixedEnsemble, "_targets", lambda self, ids, rows: slices.append(len(rows)) or real(self, ids, rows))
    for budget in (1024, 1):
        slices.clear()
        out = tmp_path / f"budget{budget}.zarr"
        dump(dump_config(odd_data, dirs, out, combine="mean-probs", max_chunks=24, min_coverage=0.2, batch_size=12,
                         block_rows=24, logit_budget_mb=budget))
        caches.append(stored_objects(out))
        assert sum(slices) == 24
        if budget == 1024:
            assert set(slices) == {12}  # unsplit
    assert max(slices) < 12 and len(set(slices)) == 1  # the 1 MB run: batches of 12 in equal, smaller slices
    assert caches[0].keys() == caches[1].keys()
    differ = [k for k in caches[0] if caches[0][k] != caches[1][k] and not k.endswith("zarr.json")]
    assert differ == []


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_runs_a_different_tokenizer_teachers_head_in_fp32(tmp_path, odd_data, teachers, monkeypatch, fast):
    """--precision bf16: the different-tokenizer teacher's layers run under autocast and its head in fp32:
    the fast head's GEMM outside autocast, or the model's own forward inside fp32_head (its head and what
    follows in fp32; fp32_head itself is tested in test_precision.py). Under autocast a GEMM gives bf16, so
    the probabilities' dtype shows where the head ran."""
    import contextlib

    from conftest import dump_config
    from logitcache.teachers import mixed
    from logitcache.dump import dump

    seen, dtypes = [], []
    real, real_map = mixed.fp32_head, mixed.map_onto

    @contextlib.contextmanager
    def recording(model):
        with real(model):
            yield
        seen.append(model.config.model_type)

    monkeypatch.setattr(mixed, "fp32_head", recording)
    monkeypatch.setattr(mixed, "map_onto", lambda flat, *a: dtypes.append(flat.dtype) or real_map(flat, *a))
    if not fast:
        monkeypatch.setattr(mixed, "fast_head_is_exact", lambda *a: False)
    dump(dump_config(odd_data, [teachers["same"], teachers["unigram"]], tmp_path / "bf16.zarr", combine="mean-probs",
                     max_chunks=8, min_coverage=0.2, precision="bf16"))
    import torch

    assert dtypes and set(dtypes) == {torch.float32}
    assert set(seen) == (set() if fast else {"llama"})


def load_student(data_dir: Path):
    from logitcache.data.tokenizer import load_tokenizer

    return load_tokenizer(data_dir / "tokenizer.json")


def test_sampled_targets_draw_from_the_mixed_distribution(tmp_path, odd_data, teachers):
    """Sampled targets: each drawn id's p is the mixed ensemble's (the top-k=V float32 cache of the same
    teachers), and positions no teacher aligns hold no draw."""
    from conftest import dump_config
    from logitcache import open_cache
    from logitcache.dump import dump

    dirs = [teachers["metaspace"], teachers["byte-level"]]
    settings = dict(combine="mean-probs", prob_dtype="float32", max_chunks=16, min_coverage=0.2)
    dump(dump_config(odd_data, dirs, tmp_path / "full.zarr", top_k=300, **settings))
    dump(dump_config(odd_data, dirs, tmp_path / "sampled.zarr", targets="sample", samples=8, **settings))
    cached = open_cache(tmp_path / "full.zarr").read(0, 16)
    ids, probs = cached.ids, cached.probs
    dense = np.zeros((*ids.shape[:2], 300))
    np.put_along_axis(dense, ids, probs, -1)
    reader = open_cache(tmp_path / "sampled.zarr")
    cached = reader.read(0, 16)
    s_ids, s_p, s_w = cached.ids, cached.probs, cached.weights
    count = cached.teacher_count
    assert np.array_equal(count, open_cache(tmp_path / "full.zarr").read(0, 16).teacher_count)
    drawn = s_w > 0
    assert np.allclose(np.take_along_axis(dense, s_ids, -1)[drawn], s_p[drawn], atol=1e-6)
    assert not drawn[count == 0].any() and drawn[count > 0].any(axis=-1).all()


def test_padding_does_not_change_a_logit(teachers):
    """A right-padded batch with its attention mask gives every real position the logits of that sequence
    run alone (mixed.padded), for both architectures."""
    import torch

    from logitcache.teachers.align import ChunkAlignment
    from logitcache.teachers.mixed import padded
    from logitcache.teachers.models import load_model

    rng = np.random.default_rng(0)
    for kind in ("byte-level", "metaspace"):
        model = load_model(teachers[kind])
        seqs = [rng.integers(3, 150, size=n) for n in (5, 17, 11)]
        ids, mask = padded([ChunkAlignment(s, np.zeros(0, np.int64), np.zeros(0, bool)) for s in seqs],
                           torch.device("cpu"))
        with torch.no_grad():
            batch = model(input_ids=ids, attention_mask=mask).logits
            for row, s in enumerate(seqs):
                alone = model(input_ids=torch.from_numpy(s)[None]).logits[0]
                assert torch.allclose(batch[row, :len(s)], alone, rtol=0, atol=1e-5), kind
                assert (batch[row, :len(s)] - alone).abs().max() <= 1e-6 * alone.abs().max()


def test_a_lossy_teacher_tokenizer_is_refused_below_min_coverage(tmp_path, odd_data, teachers):
    """A lowercasing normalizer: its tokens do not spell the text after the first capital, coverage falls
    below --min-coverage and the dump refuses in one line (exit 2) before writing anything."""
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    out = tmp_path / "c.zarr"
    args = ["dump", "--data", str(odd_data), "--teacher", str(teachers["lowercase"]), "--out", str(out),
            "--combine", "mean-probs", "--max-chunks", "16", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "teacher gpt2-lower" in lines[0] and "below --min-coverage 0.5" in lines[0], lines[0]
    assert not out.exists()
    measured = float(lines[0].split("aligns with ")[1].split("%")[0]) / 100

    result = CliRunner().invoke(app, args[:4] + [str(teachers["byte-level"])] + args[5:] + ["--min-coverage", "0.2"])
    assert result.exit_code == 0, result.output
    from logitcache import open_cache

    lossless = open_cache(out).attrs["coverage"][0]["positions"]
    assert measured < lossless / 2, (measured, lossless)


def test_a_data_dir_without_text_serves_same_tokenizer_dumps_only(tmp_path, odd_data, teachers):
    import shutil

    from conftest import dump_config
    from logitcache.dump import dump
    from logitcache.errors import LogitcacheError

    old = tmp_path / "data"
    shutil.copytree(odd_data, old)
    shutil.rmtree(old / "tokens.zarr" / "text")
    dump(dump_config(old, [teachers["same"]], tmp_path / "same.zarr", max_chunks=8))
    with pytest.raises(LogitcacheError, match="records no text for split 'train'.*re-run `logitcache prepare`"):
        dump(dump_config(old, [teachers["metaspace"]], tmp_path / "cross.zarr", combine="mean-probs", max_chunks=8))
    assert not (tmp_path / "cross.zarr").exists()


# --- parity: every teacher on the data's tokenizer ---------------------------------------------------------------

def single_tokenizer_cache(out: Path, config) -> None:
    """A same-tokenizer cache written from the single-tokenizer parts alone: the ensemble (Ensemble) over
    the stored tokens in fixed batches, top-k or sampled targets, CacheStore.write_block per block."""
    import torch

    from logitcache.data.prepared import load_data
    from logitcache.dump import cache_attrs, select_rows
    from logitcache.teachers.targets import sample_targets
    from logitcache.teachers.ensemble import Ensemble
    from logitcache.teachers.models import describe, load_model
    from logitcache.store import Targets, CacheLayout, CacheStore, create_cache
    from logitcache.data.tokenizer import folder_tokenizer_identity

    data = load_data(config.data)
    rows = select_rows(data.store.split(config.split), config)
    models = [load_model(p) for p in config.teachers]
    infos = [describe(p, m) | {"tokenizer_identity": folder_tokenizer_identity(p)} for p, m in zip(config.teachers, models)]
    device = torch.device("cpu")
    ensemble = Ensemble(models, config.combine, config.temperature, device, vocab_size=data.vocab_size)
    layout = CacheLayout(rows.shape[0], data.seq_len, config.width, data.vocab_size, config.block_rows,
                         config.prob_dtype, with_weights=config.targets == "sample")
    attrs = cache_attrs(config, data, infos, rows.shape[0], device)
    create_cache(out, layout, attrs)
    store = CacheStore(out, mode="r+")
    from logitcache.store.writers import device_kind, record_writer

    record_writer(store, device_kind(device, attrs["precision"]))  # who wrote blocks (done/zarr.json)
    for block in range(layout.n_blocks):
        start, stop = layout.block_range(block)
        generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + block)
        parts = []
        for b0 in range(start, stop, config.batch_size):
            ids = torch.from_numpy(rows[b0:min(b0 + config.batch_size, stop)].astype(np.int64))
            if config.targets == "topk":
                parts.append(ensemble.topk(ids, config.top_k))
            else:
                parts.append(sample_targets(ensemble.probs(ids), config.samples, config.proposal_temperature, generator))
        arrays = [torch.cat(column).numpy() for column in zip(*parts)]
        store.write_block(block, Targets(rows[start:stop], *arrays))


def stored_objects(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("combine", ["mean-logits", "mean-probs"])
@pytest.mark.parametrize("targets", ["topk", "sample"])
def test_same_tokenizer_teachers_give_the_single_tokenizer_cache_byte_for_byte(tmp_path, odd_data, teachers, combine, targets):
    """Every teacher on the data's tokenizer (one folder re-saved by another writer: other bytes, the same
    identity) reads the stored tokens: every stored object equals the cache the single-tokenizer parts
    write, no teacher_count array, no coverage attribute."""
    import shutil

    from conftest import dump_config
    from logitcache.dump import dump
    from logitcache.data.tokenizer import load_tokenizer

    resaved = tmp_path / "resaved"
    shutil.copytree(teachers["same"], resaved)
    load_tokenizer(resaved / "tokenizer.json").save(str(resaved / "tokenizer.json"), pretty=False)
    assert (resaved / "tokenizer.json").read_bytes() != (odd_data / "tokenizer.json").read_bytes()
    config = dump_config(odd_data, [teachers["same"], resaved], tmp_path / "dumped.zarr", combine=combine,
                         targets=targets, samples=8, max_chunks=20)
    dump(config)
    single_tokenizer_cache(tmp_path / "reference.zarr", config)
    dumped, reference = stored_objects(tmp_path / "dumped.zarr"), stored_objects(tmp_path / "reference.zarr")
    assert dumped.keys() == reference.keys() and not any(k.startswith("teacher_count") for k in dumped)
    for key in dumped:
        if key != "zarr.json":
            assert dumped[key] == reference[key], key
    attrs = [json.loads(objects["zarr.json"])["attributes"]["logitcache"] for objects in (dumped, reference)]
    for a in attrs:
        a.pop("created", None)
    assert attrs[0].keys() == attrs[1].keys() and "coverage" not in attrs[0] and "with_teacher_count" not in attrs[0]
    assert {k: v for k, v in attrs[0].items() if k != "teachers"} == {k: v for k, v in attrs[1].items() if k != "teachers"}


def test_dump_and_inspect_print_each_teachers_coverage(tmp_path, odd_data, teachers):
    from typer.testing import CliRunner

    from logitcache import open_cache
    from logitcache_cli.app import app

    out = tmp_path / "mixed.zarr"
    result = CliRunner().invoke(app, ["dump", "--data", str(odd_data), "--teacher", str(teachers["same"]), "--teacher",
                                      str(teachers["unigram"]), "--out", str(out), "--combine", "mean-probs",
                                      "--max-chunks", "16", "--device", "cpu", "--teacher-weights", "2,1"])
    assert result.exit_code == 0, result.output
    entry = open_cache(out).attrs["coverage"][0]
    assert entry["teacher"] == "llama-unigram" and 0.2 < entry["positions"] < 1
    assert "llama-unigram" in result.output and f"{entry['positions']:.4g}"[:4] in result.output
    assert "alignment self-check" in result.output and entry["self_check"]["violations"] == 0
    assert str(entry["self_check"]["checked"]) in result.output.split("alignment self-check")[1]
    result = CliRunner().invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0 and "coverage llama-unigram" in result.output, result.output
    assert f"{entry['positions']:.1%}" in result.output


@pytest.mark.parametrize("rows,step,want", [(16, 14, 8), (16, 16, 16), (16, 5, 4), (5, 2, 2), (7, 3, 3), (1, 4, 1),
                                            (0, 4, 4), (16, 1, 1)])
def test_balanced_step_runs_equal_passes_no_larger_than_the_budget(rows, step, want):
    """As many passes as the budget needs, of equal size: never a pass larger than `step`, never one more pass."""
    from logitcache.teachers.ensemble import balanced_step

    got = balanced_step(rows, step)
    assert got == want
    if rows:
        assert got <= step and -(-rows // got) == -(-rows // step)


class LiveFloats:
    """A dispatch mode that follows the live tensors of at least `floor` bytes by storage (weak references:
    views keep their storage alive) and records the peak of their sum, counting the big tensors that exist
    when it starts except `exclude` (the models' parameters). Temporaries inside one aten op are not seen."""

    def __init__(self, floor: int, exclude: set):
        import gc
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        live: dict[int, tuple[int, list]] = {}  # storage pointer -> (bytes, weak references to its tensors)

        def track(t):
            s = t.untyped_storage()
            if s.nbytes() >= floor and s.data_ptr() not in exclude:
                live.setdefault(s.data_ptr(), (s.nbytes(), []))[1].append(weakref.ref(t))

        for o in gc.get_objects():
            if type(o) is torch.Tensor:
                track(o)
        owner = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(t, torch.Tensor):
                        track(t)
                for ptr in [p for p, (_, refs) in live.items() if all(r() is None for r in refs)]:
                    del live[ptr]
                owner.peak = max(owner.peak, sum(n for n, _ in live.values()))
                return out

        self.peak, self.mode = 0, Mode()


@pytest.mark.parametrize("case", ["fast", "with a same-tokenizer teacher", "own forward, wider logits"])
def test_rows_per_pass_keeps_the_mixed_work_buffers_within_the_logit_budget(case, monkeypatch):
    """The live (rows, T, V)-sized tensors while a mixed batch's targets are made, measured, stay within
    --logit-budget-mb at the rows rows_per_pass allows (a budget of a few rows, so the accounting decides):
    a teacher on the fast head, one beside a same-tokenizer teacher (whose Ensemble keeps its buffers), and
    one through its own forward with logits wider than its tokenizer."""
    from types import SimpleNamespace

    import torch

    from logitcache.teachers import mixed
    from logitcache.teachers.align import ChunkAlignment
    from logitcache.teachers.models import build_model, get_preset

    vocab, t = 4000, 16
    if case == "own forward, wider logits":
        monkeypatch.setattr(mixed, "fast_head_is_exact", lambda *a: False)
    other = build_model(get_preset("llama-tiny"), vocab + (400 if case == "own forward, wider logits" else 0), seed=1)
    identity = [(np.arange(vocab), np.arange(vocab))]

    class Identity:  # every student position aligned with the same teacher position, ids as they are
        map = SimpleNamespace(layers=lambda kind: identity)
        teacher = SimpleNamespace(size=vocab)
        checked = violations = 0

        def align(self, cache_rows, tokens, strict=True):
            return [ChunkAlignment(row % vocab, np.arange(t), np.zeros(t, dtype=np.int64)) for row in tokens]

    members = [(other, Identity())]
    models = [other]
    if case == "with a same-tokenizer teacher":
        same = build_model(get_preset("llama-tiny"), vocab, seed=0)
        members.insert(0, (same, None))
        models.append(same)
    budget = 4 * t * vocab * 4 * 3  # four rows of three (T, V) fp32 buffers
    ensemble = mixed.MixedEnsemble(members, 2.0, torch.device("cpu"), vocab_size=vocab, logit_budget=budget)
    rows = ensemble.rows_per_pass(t)
    ids = torch.randint(3, vocab, (rows, t))
    with torch.no_grad():
        ensemble._targets(ids, np.arange(rows))  # a first call: the kept buffers exist, as in a dump
        params = {p.untyped_storage().data_ptr() for m in models for p in m.parameters()}
        tracker = LiveFloats(t * vocab * 4, params)
        with tracker.mode:
            ensemble._targets(ids, np.arange(rows))
    assert rows >= 1 and tracker.peak <= budget, (rows, tracker.peak / budget)
    assert tracker.peak >= t * vocab * 4 * 2  # it saw the batch's buffers


@pytest.mark.parametrize("temperature", [1.0, 1.5, 2.0])
def test_the_fast_head_equals_the_teachers_own_forward(temperature):
    """A different-tokenizer teacher's fast head (one fp32 GEMM on the aligned rows, 1/T as its alpha, the
    bias added over 1/T) against its own forward through fp32_head and head_rows: a head with a bias, logits
    wider than the tokenizer (4,400 against 4,000), a temperature that is not a power of two."""
    from types import SimpleNamespace

    import torch

    from logitcache.teachers.align import ChunkAlignment
    from logitcache.teachers.mixed import MixedEnsemble
    from logitcache.teachers.models import build_model, get_preset

    vocab, t = 4000, 12
    model = build_model(get_preset("llama-tiny"), vocab + 400, seed=3)
    head = torch.nn.Linear(model.config.hidden_size, vocab + 400, bias=True)
    torch.nn.init.normal_(head.bias, std=2.0)
    model.lm_head = head
    model.config.tie_word_embeddings = False
    identity = [(np.arange(vocab), np.arange(vocab))]
    aligner = SimpleNamespace(map=SimpleNamespace(layers=lambda kind: identity), teacher=SimpleNamespace(size=vocab))
    ensemble = MixedEnsemble([(model, aligner)], temperature, torch.device("cpu"), vocab_size=vocab)
    assert ensemble._fast == [True]
    g = np.random.default_rng(0)
    alignments = [ChunkAlignment(g.integers(3, vocab, 9 + r), np.where(np.arange(t) == 5, -1, np.minimum(np.arange(t), 8 + r)),
                                 np.zeros(t, dtype=np.int64)) for r in range(3)]  # uneven lengths, one unaligned
    with torch.no_grad():
        fast, aligned = ensemble._teacher_probs(0, model, alignments)
        ensemble._fast = [False]
        own, aligned_own = ensemble._teacher_probs(0, model, alignments)
    assert torch.equal(aligned, aligned_own) and aligned.sum() == 3 * (t - 1)
    assert torch.allclose(fast, own, rtol=1e-5, atol=1e-7), float((fast - own).abs().max())
    assert torch.allclose(fast.sum(-1)[aligned > 0], torch.ones(int(aligned.sum())), atol=1e-5)
