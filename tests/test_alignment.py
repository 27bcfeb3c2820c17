"""Teachers on tokenizers built with the conventions of real checkpoints, against data prepared with three kinds
of tokenizer: every mixed cache equals a plain-loop reference written here, and the dump's alignment
self-check reports 0 violations (and refuses a broken id map).

Teachers: GPT-2 (byte-level BPE, `<|endoftext|>` its BOS and its EOS), Llama-2 (Metaspace with a prefix space
at the start and <0xNN> byte fallback, `<s>` template), Llama-3 (byte-level, `ignore_merges`,
`<|begin_of_text|>` template), Qwen2 (byte-level behind an NFC normalizer, no BOS), a unigram without byte
fallback that emits `<unk>`. Data: prepare's byte-level BPE, a Llama-2 tokenizer (`--tokenizer`: the student
writes `▁X` after `<s>`), the unigram (`<unk>` in the data, EOS only). Text: CJK, emoji, NFD, ligatures,
literal special tokens and short one-line documents.
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_lines
from test_cross_tokenizer import ODD_LINES, TRAIN_TEXT, byte_level_bytes, teacher_unigram

UNICODE_LINES = ["Tokyo 東京タワー and 大阪.", "Smile 🙂 and wave 👋🏽 now.", unicodedata.normalize("NFD", "Crème brûlée, naïve."),
                 "A ﬁne ﬂower ﬀ.", "It says <|endoftext|> here and <|begin_of_text|> there.", "Ok.", "Hi!"]
SHORT = ["Yes.", "No way.", "The cat.", "Look!", "Mm.", "東京.", "🙂", "ﬁsh."]


def unicode_corpus(root: Path) -> Path:
    """One short document per line (a BabyLM-style source), the odd lines and the lines above among them."""
    root.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "dev", "test")):
        lines = synthetic_lines(240 if split == "train" else 40, 50 + i)
        out = []
        for j, line in enumerate(lines):
            out.append(line)
            out.append(SHORT[j % len(SHORT)])
            if j % 3 == 0:
                out.append(UNICODE_LINES[(j // 3) % len(UNICODE_LINES)])
            if j % 5 == 0:
                out.append(ODD_LINES[(j // 5) % len(ODD_LINES)])
        (root / f"stories.{split}").write_text("\n".join(out) + "\n")
    return root


TEXT = TRAIN_TEXT + UNICODE_LINES[:1] + UNICODE_LINES[2:] + SHORT  # no emoji: the unigram emits <unk> for them
BYTE_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _byte_level(vocab_size: int, specials: list[str], regex: bool = False, ignore_merges: bool = False,
                normalizer=None):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if regex:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(BYTE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                            show_progress=False))
    if ignore_merges:
        spec = json.loads(tokenizer.to_str())
        spec["model"]["ignore_merges"] = True
        tokenizer = Tokenizer.from_str(json.dumps(spec))
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    return tokenizer


def gpt2():
    """GPT-2: byte-level BPE, one special `<|endoftext|>` that tokenizer_config names its BOS and EOS."""
    return _byte_level(400, ["<|endoftext|>"]), {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}


def llama2():
    """Llama-2: Prepend/Replace normalizer (a prefix space at the start), BPE with <0xNN> byte fallback,
    `<s> $A` template, `<unk>`."""
    from logitcache.data.tokenizer import train_metaspace_bpe

    return train_metaspace_bpe([t for t in TEXT if "東" not in t], 260), {"bos_token": "<s>", "eos_token": "</s>"}


def llama3():
    """Llama-3: regex split then byte-level, ignore_merges, `<|begin_of_text|> $A` template."""
    from tokenizers import processors

    tokenizer = _byte_level(450, ["<|begin_of_text|>", "<|end_of_text|>"], regex=True, ignore_merges=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    return tokenizer, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}


def qwen2():
    """Qwen2: NFC normalizer, regex split then byte-level, `<|endoftext|>` its EOS, no BOS."""
    from tokenizers import normalizers

    tokenizer = _byte_level(420, ["<|endoftext|>"], regex=True, normalizer=normalizers.NFC())
    return tokenizer, {"bos_token": None, "eos_token": "<|endoftext|>"}


def unigram():
    """A unigram without byte fallback: characters outside its training text are `<unk>`."""
    return teacher_unigram(), {"bos_token": "<s>", "eos_token": "</s>"}


TEACHERS = {"gpt2": (gpt2, "gpt2"), "llama2": (llama2, "llama"), "llama3": (llama3, "llama"),
            "qwen2": (qwen2, "llama"), "unigram": (unigram, "llama")}


def save_teacher(root: Path, name: str, seed: int) -> Path:
    from logitcache.data.tokenizer import special_ids
    from logitcache.teachers.models import build_model, get_preset

    build, arch = TEACHERS[name]
    tokenizer, config = build()
    folder = root / name
    folder.mkdir(parents=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    sp = special_ids(tokenizer, folder)
    model = build_model(get_preset(f"{arch}-tiny"), tokenizer.get_vocab_size(with_added_tokens=True), seed=seed,
                        specials={"bos": sp["bos"], "eos": sp["eos"], "pad": sp["pad"]})
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return unicode_corpus(tmp_path_factory.mktemp("unicode") / "raw")


@pytest.fixture(scope="module")
def real_teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real-teachers")
    return {name: save_teacher(root, name, seed) for seed, name in enumerate(TEACHERS)}


DATA_KINDS = {"trained-bpe": None, "llama2": llama2, "unigram": unigram}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, corpus) -> dict[str, Path]:
    from logitcache.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("unicode-data")
    out = {}
    for name, build in DATA_KINDS.items():
        settings = dict(data=corpus, out=root / name, seq_len=32)
        if build is None:
            settings["vocab_size"] = 300
        else:
            folder = root / f"{name}-tokenizer"
            folder.mkdir()
            tokenizer, config = build()
            tokenizer.save(str(folder / "tokenizer.json"))
            (folder / "tokenizer_config.json").write_text(json.dumps(config))
            settings["tokenizer"] = folder
        prepare(PrepareConfig(**settings))
        out[name] = root / name
    return out


# --- the plain-loop reference --------------------------------------------------------------------------------------

def bytes_table(tokenizer) -> list[bytes | None]:
    """Each id's bytes mid-text, written out here: byte-level through the test's own table, <0xNN> as that
    byte, ▁ as a space; None for special tokens."""
    import re

    byte_level = json.loads(tokenizer.to_str())["decoder"]["type"] == "ByteLevel"
    added = tokenizer.get_added_tokens_decoder()
    out = []
    for v in range(tokenizer.get_vocab_size()):
        token = tokenizer.id_to_token(v)
        if v in added and added[v].special:
            out.append(None)
        elif byte_level:
            out.append(byte_level_bytes(token))
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", token):
            out.append(bytes([int(token[3:5], 16)]))
        else:
            out.append(token.replace("▁", " ").encode())
    return out


def _specials(folder: Path, tokenizer) -> tuple[int | None, int | None]:
    """(BOS, EOS) as tokenizer_config.json names them, else by the usual names."""
    if not (folder / "tokenizer_config.json").is_file():
        return tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>") or tokenizer.token_to_id("<|endoftext|>")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return tuple(None if config.get(k) is None else tokenizer.token_to_id(config[k]) for k in ("bos_token", "eos_token"))


def _prefixes(tokenizer) -> str | None:
    """Where the tokenizer puts a space in front of a text: "always" (the Llama-2 Prepend normalizer), "unless
    spaced" (a Metaspace pre-tokenizer: not in front of a text that starts with one), None."""
    spec = json.loads(tokenizer.to_str())
    if "Prepend" in json.dumps(spec.get("normalizer")):
        return "always"
    return "unless spaced" if "Metaspace" in json.dumps(spec.get("pre_tokenizer")) else None


def _whole(seg: bytes) -> tuple[int, int]:
    lo = 0
    while lo < len(seg) and seg[lo] & 0xC0 == 0x80:
        lo += 1
    hi = len(seg)
    while hi > lo:
        try:
            seg[lo:hi].decode("utf-8")
            break
        except UnicodeDecodeError:
            hi -= 1
    return lo, hi


def reference_chunk(teacher, t_bytes, t_bos, t_eos, t_prefix, s_bytes, s_bos, s_eos, s_prefix, tokens, pieces):
    """The teacher's ids of one chunk and, per student position, (teacher position, prefix-space kind) or None;
    and the number of positions masked before a teacher token that does not spell the text."""
    adds_bos = t_bos is not None and teacher.encode("a", add_special_tokens=True).ids[:1] == [t_bos]
    ids, keys, spells, kinds = [], [], [], []
    n_mark, byte, t = 0, 0, 0
    while t < len(tokens):
        if tokens[t] in (s_bos, s_eos):
            n_mark += 1
            byte += len(pieces[t])
            theirs = t_bos if tokens[t] == s_bos else t_eos
            one = t_bos == t_eos and tokens[t] == s_bos and ids and ids[-1] == theirs and keys[-1] == (byte, n_mark - 1)
            if theirs is None or one:
                if keys and keys[-1] == (byte, n_mark - 1):
                    keys[-1] = (byte, n_mark)
            else:
                ids += [theirs]
                keys += [(byte, n_mark)]
                spells += [True]
                kinds += [0]
            t += 1
            continue
        start, first, seg = byte, t, b""
        while t < len(tokens) and tokens[t] not in (s_bos, s_eos):
            seg += pieces[t]
            byte += len(pieces[t])
            t += 1
        if adds_bos and (not ids or ids[-1] != t_bos):
            keys += [(start, n_mark) if ids else None]
            ids += [t_bos]
            spells += [True]
            kinds += [0]
        lo, hi = _whole(seg)
        text = seg[lo:hi]
        seg_ids = teacher.encode(text.decode(), add_special_tokens=False).ids
        t_strip = bool(seg_ids) and (t_bytes[seg_ids[0]] or b"")[:1] == b" " \
            and (t_prefix == "always" or t_prefix == "unless spaced" and text[:1] != b" ")
        first_bytes = s_bytes[tokens[first]]
        s_strip = bool(s_prefix) and lo == 0 and first_bytes is not None and first_bytes == b" " + pieces[first]
        if ids:
            kinds[-1] = int(t_strip) + 2 * int(s_strip)
        at, ok = 0, True
        for k, v in enumerate(seg_ids):
            b = t_bytes[v]
            if b is not None and k == 0 and t_strip:
                b = b[1:]
            ok = ok and b is not None and text[at:at + len(b)] == b
            at += len(b) if ok else 0
            whole = at == len(text) or text[at] & 0xC0 != 0x80
            ids += [v]
            keys += [(start + lo + at, n_mark) if ok and whole else None]
            spells += [ok]
            kinds += [2 * int(s_strip) if ok and at == 0 else 0]
    last = {key: j for j, key in enumerate(keys) if key is not None}
    out, n_mark, byte, previous, masked = [], 0, 0, 0, 0
    for t, x in enumerate(tokens):
        byte += len(pieces[t])
        out.append(None)
        if x in (s_bos, s_eos):
            n_mark += 1
        elif byte == previous:
            continue
        previous = byte
        j = last.get((byte, n_mark))
        if j is not None and j + 1 < len(ids) and not spells[j + 1]:
            masked += 1
        elif j is not None:
            out[-1] = (j, kinds[j])
    return ids, out, masked


def reference_maps(t_bytes, t_bos, t_eos, s_bytes, s_bos, s_eos) -> np.ndarray:
    """(4, V_t) teacher id -> student id per kind (bit 1: without the teacher's prefix space, bit 2: onto student
    tokens with a prefix space, compared without it), by the lowest student id of equal bytes."""
    lookups = []
    for s_strip in (False, True):
        lookup = {}
        for v, b in enumerate(s_bytes):
            if b is not None and s_strip:
                b = b[1:] if b[:1] == b" " and len(b) > 1 else None
            if b:
                lookup.setdefault(b, v)
        lookups.append(lookup)
    maps = np.full((4, len(t_bytes)), -1)
    for kind in range(4):
        for v, b in enumerate(t_bytes):
            if b is not None and kind & 1:
                b = b[1:] if b[:1] == b" " and len(b) > 1 else None
            if b is not None:
                maps[kind, v] = lookups[kind >> 1].get(b, -1)
        if t_bos is not None and s_bos is not None:
            maps[kind, t_bos] = s_bos
        if t_eos is not None and s_eos is not None:
            maps[kind, t_eos] = s_eos
    return maps


def reference_cache(data_dir: Path, teacher_dirs: list[Path], temperature: float, n_rows: int, weights=None):
    """Dense (N, T, V) targets (the weighted mean over the teachers aligned at each position), teacher counts
    (N, T) and each teacher's masked positions, by plain loops over model(x).logits."""
    import torch

    from logitcache.data.prepared import load_data, spread_indices
    from logitcache.data.tokenizer import load_tokenizer
    from logitcache.teachers.models import load_model

    data = load_data(data_dir)
    split = data.store.split("train")
    index = spread_indices(split.shape[0], n_rows)
    rows = split[index]
    text, ends = data.store.split_text("train")
    student = load_tokenizer(data.tokenizer_path)
    s_bos, s_eos = data.special_ids["bos"], data.special_ids["eos"]
    s_prefix = _prefixes(student)
    s_bytes = bytes_table(student)
    vocab = data.vocab_size
    dense = np.zeros((*rows.shape, vocab))
    count = np.zeros(rows.shape, dtype=np.int64)
    weight_sum = np.zeros(rows.shape)
    masked = []
    for folder, w in zip(teacher_dirs, weights or [1.0] * len(teacher_dirs)):
        teacher = load_tokenizer(folder / "tokenizer.json")
        model = load_model(folder)
        masked.append(0)
        if json.loads(teacher.to_str()) == json.loads(student.to_str()):  # the data's tokenizer: the stored tokens
            with torch.no_grad():
                logits = model(torch.from_numpy(rows.astype(np.int64))).logits[..., :vocab]
            dense += w * torch.softmax(logits.double() / temperature, -1).numpy()
            count += 1
            weight_sum += w
            continue
        teacher.encode_special_tokens = True  # the teacher reads text that spells a special token as text
        t_bos, t_eos = _specials(folder, teacher)
        t_bytes = bytes_table(teacher)
        maps = reference_maps(t_bytes, t_bos, t_eos, s_bytes, s_bos, s_eos)
        for r, row in enumerate(index.tolist()):
            first = row * rows.shape[1]
            begin = int(ends[first - 1]) if first else 0
            bounds = [begin] + ends[first:first + rows.shape[1]].astype(np.int64).tolist()
            pieces = [bytes(text[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
            ids, at, m = reference_chunk(teacher, t_bytes, t_bos, t_eos, _prefixes(teacher), s_bytes, s_bos, s_eos, s_prefix,
                                         rows[r].tolist(), pieces)
            masked[-1] += m
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :, :teacher.get_vocab_size()]
            p = torch.softmax(logits.double() / temperature, -1).numpy()
            for t, hit in enumerate(at):
                if hit is None:
                    continue
                j, kind = hit
                count[r, t] += 1
                weight_sum[r, t] += w
                onto = maps[kind]
                np.add.at(dense[r, t], onto[onto >= 0], w * p[j, onto >= 0])
    return rows, dense / np.where(weight_sum > 0, weight_sum, 1.0)[..., None], count, masked


# --- the tests ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data_kind", list(DATA_KINDS))
def test_every_real_convention_teacher_equals_the_reference(tmp_path, datasets, real_teachers, data_kind):
    """Every teacher on every data: the cache equals the plain-loop reference; the self-check reports 0
    violations over the positions it checked, in the attributes and in the dump's report."""
    from conftest import dump_config
    from logitcache import open_cache
    from logitcache.dump import dump

    data, dirs, n_rows = datasets[data_kind], list(real_teachers.values()), 24
    out = tmp_path / "cache.zarr"
    from logitcache.data.prepared import load_data

    vocab = load_data(data).vocab_size
    report = dump(dump_config(data, dirs, out, combine="mean-probs", top_k=vocab, prob_dtype="float32",
                              max_chunks=n_rows, min_coverage=0.2, batch_size=8, block_rows=20))
    rows, expected, expected_count, masked = reference_cache(data, dirs, 2.0, n_rows)
    reader = open_cache(out)
    cached = reader.read(0, n_rows)
    assert np.array_equal(cached.tokens, rows.astype(np.int64))
    dense = np.zeros(expected.shape)
    np.put_along_axis(dense, cached.ids, cached.probs, -1)
    count = cached.teacher_count
    assert np.array_equal(count, expected_count), np.argwhere(count != expected_count)[:5]
    assert np.abs(dense - expected).max() <= 1e-5
    assert (count > 0).mean() > 0.8 and (count == len(dirs)).mean() > 0.2  # alignment is partial, not absent
    coverage = reader.attrs["coverage"]
    own = [i for i, t in enumerate(reader.attrs["teachers"]) if t.get("tokenizer") == "own"]
    assert [c["teacher"] for c in coverage] == [dirs[i].name for i in own]
    assert len(own) == len(dirs) - (data_kind == "llama2")  # llama2 on its own data: the data's tokenizer
    for entry, run in zip(coverage, [report.coverage[i] for i in own]):
        assert entry["self_check"]["checked"] > 100 and entry["self_check"]["violations"] == 0, entry
        assert run["checked"] > 100 and run["violations"] == 0, run


def test_the_text_record_holds_each_tokens_own_bytes(datasets, tmp_path, corpus):
    """prepare --tokenizer: each recorded piece is the token's own bytes (a byte-level piece or <0xNN> of a
    character ends inside it), the prefix space at a document start is no text, a <unk> covers what it
    replaced; specials are zero-width."""
    from logitcache.data.prepared import load_data
    from logitcache.data.tokenizer import load_tokenizer
    from logitcache.prepare import PrepareConfig, prepare

    folder = tmp_path / "gpt2"
    folder.mkdir()
    tokenizer, config = gpt2()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    prepare(PrepareConfig(data=corpus, out=tmp_path / "gpt2-data", tokenizer=folder, seq_len=32))
    inside = 0
    for data_dir in (tmp_path / "gpt2-data", datasets["llama2"], datasets["unigram"]):
        data = load_data(data_dir)
        own_bytes = bytes_table(load_tokenizer(data.tokenizer_path))
        student = load_tokenizer(data.tokenizer_path)
        markers = {data.special_ids["bos"], data.special_ids["eos"]}
        text, ends = data.store.split_text("train")
        flat = data.store.split("train").reshape(-1)
        starts = np.concatenate([[0], ends[:-1]])
        for i, (x, a, b) in enumerate(zip(flat.tolist(), starts.tolist(), ends.tolist())):
            piece, own = bytes(text[a:b]), own_bytes[x]
            inside += b < len(text) and text[b] & 0xC0 == 0x80
            if x in markers:  # zero-width, or the text that spelled it (a pretrained tokenizer reads it so)
                assert piece in (b"", student.id_to_token(x).encode()), (data_dir.name, i)
            elif own is None:  # <unk>: the characters it replaced
                assert piece and student.id_to_token(x) == "<unk>", (data_dir.name, i, piece)
            elif (i == 0 or flat[i - 1] in markers) and own[:1] == b" " and data_dir.name != "gpt2-data":
                assert piece == own[1:], (data_dir.name, i, piece, own)
            else:
                assert piece == own, (data_dir.name, i, piece, own)
    assert inside > 0  # some tokens end inside a character


def test_a_broken_id_map_refuses_the_dump(tmp_path, datasets, real_teachers, monkeypatch):
    """Mutation: the GPT-2 teacher's <|endoftext|> mapped to the student's <s>: the dump refuses in one line
    naming the teacher and a position (exit 2), and writes nothing."""
    from typer.testing import CliRunner

    from logitcache.teachers import align
    from logitcache_cli.app import app

    real = align.id_map
    gpt2_eos = json.loads((real_teachers["gpt2"] / "tokenizer.json").read_text())["added_tokens"][0]["id"]

    def broken(teacher, student):
        out = real(teacher, student)
        if teacher.eos == gpt2_eos and teacher.bos == gpt2_eos:
            out.maps[:, gpt2_eos] = student.bos
        return out

    monkeypatch.setattr(align, "id_map", broken)
    out = tmp_path / "broken.zarr"
    result = CliRunner().invoke(app, ["dump", "--data", str(datasets["trained-bpe"]), "--teacher",
                                      str(real_teachers["llama3"]), "--teacher", str(real_teachers["gpt2"]), "--out",
                                      str(out), "--combine", "mean-probs", "--max-chunks", "16", "--device", "cpu"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "teacher gpt2" in lines[0] and "self-check" in lines[0] and "position" in lines[0], lines[0]
    assert not out.exists()


def test_the_self_check_refuses_a_block_before_it_is_written(tmp_path, datasets, real_teachers, monkeypatch):
    """A violation in a block the sample did not see: the block is not written and the dump stops."""
    from conftest import dump_config
    from logitcache.dump import dump
    from logitcache.errors import LogitcacheError
    from logitcache.teachers import align, cross

    monkeypatch.setattr(cross, "COVERAGE_CHUNKS", 1)  # the sample: the first chunk only
    real = align.check_alignment
    calls = []

    def failing_after_the_sample(a, tokens, *args):
        calls.append(1)
        checked, bad = real(a, tokens, *args)
        return checked, bad + ([(3, "injected")] if len(calls) > 1 else [])

    monkeypatch.setattr(align, "check_alignment", failing_after_the_sample)
    out = tmp_path / "c.zarr"
    with pytest.raises(LogitcacheError, match="teacher llama2: the alignment self-check failed"):
        dump(dump_config(datasets["trained-bpe"], [real_teachers["llama2"]], out, combine="mean-probs", max_chunks=16,
                         min_coverage=0.2))
    from logitcache.store import CacheStore

    assert not CacheStore(out).done_mask().any()


def test_document_markers_and_text_for_the_teachers(datasets, real_teachers):
    """What the teachers read: a GPT-2 teacher one <|endoftext|> between documents, mapped to the student's
    </s>; no teacher a BOS under a student <unk>; literal special-token text read as text; an NFC teacher's
    positions before NFD text masked."""
    from logitcache.data.prepared import load_data
    from logitcache.data.tokenizer import load_tokenizer
    from logitcache.teachers.align import Aligner, ChunkTexts, folder_vocabulary, vocabulary

    data = load_data(datasets["unigram"])
    split = data.store.split("train")
    rows = np.arange(split.shape[0])
    texts = ChunkTexts(data.store, "train", rows, data.seq_len)
    student = vocabulary(load_tokenizer(data.tokenizer_path), data.special_ids)
    unk = student.tokenizer.token_to_id("<unk>")
    assert (split == unk).any()  # the data holds <unk>
    for name in ("gpt2", "llama2", "llama3", "qwen2"):
        teacher = folder_vocabulary(real_teachers[name])
        aligner = Aligner(teacher, student, texts, 1 << 30, name=name)
        specials = {i for i, b in enumerate(teacher.bytes_of) if b is None}
        for a, chunk in zip(aligner.align(rows, split), split):
            n_markers = int(np.isin(chunk, list(student.markers)).sum())
            per_marker = 2 if teacher.adds_bos else 1  # a template's BOS after each EOS of the data
            assert int(np.isin(a.teacher_ids, list(specials)).sum()) <= per_marker * n_markers + 1  # none from text
            if name == "gpt2":
                pairs = a.teacher_ids[1:][a.teacher_ids[:-1] == teacher.eos]
                assert not (pairs == teacher.eos).any()  # one <|endoftext|> between documents
        if name == "gpt2":
            assert aligner.map.maps[0][teacher.eos] == student.eos
        assert (aligner.masked > 0) == (name == "qwen2")  # NFC on NFD text: the position before it is masked
        assert aligner.violations == 0 and aligner.checked > 1000
    text = b"".join(texts.chunk(r)[0] for r in rows)
    assert b"<|endoftext|>" in text  # the text spells a teacher special


def test_the_self_check_counts_only_the_positions_it_checks():
    """A position aligned with the teacher's last token has no next token in the chunk to check: it is not
    counted among the positions checked (nothing of either vocabulary is read for it)."""
    from logitcache.teachers.align import ChunkAlignment, check_alignment

    last = ChunkAlignment(np.array([7, 8]), np.array([-1, 1]), np.zeros(2, dtype=np.int64))
    assert check_alignment(last, np.array([3, 4]), b"ab", np.array([1, 2]), None, None, None) == (0, [])


def test_a_chunk_with_no_teacher_token_gives_no_nan():
    """A chunk that gives a teacher no tokens: its row of the padded batch. transformers' attention gives a
    fully masked row finite outputs, but a backend may give NaN (emulated: NaN hidden states wherever the
    mask is 0); they stay out of the mixed distribution, whose unaligned rows are zeros."""
    from types import SimpleNamespace

    import torch

    from logitcache.teachers.align import ChunkAlignment
    from logitcache.teachers.mixed import MixedEnsemble
    from logitcache.teachers.models import build_model, get_preset

    vocab, t = 40, 6
    model = build_model(get_preset("llama-tiny"), vocab, seed=0)

    def nan_where_masked(module, args, kwargs, out):
        if kwargs.get("attention_mask") is not None:  # not the fast head's unmasked probe
            out.last_hidden_state[kwargs["attention_mask"] == 0] = float("nan")
        return out

    model.model.register_forward_hook(nan_where_masked, with_kwargs=True)  # the layers' output, before the head
    identity = [(np.arange(vocab), np.arange(vocab))]
    aligner = SimpleNamespace(map=SimpleNamespace(layers=lambda kind: identity), teacher=SimpleNamespace(size=vocab))
    ensemble = MixedEnsemble([(model, aligner)], 1.0, torch.device("cpu"), vocab_size=vocab)
    full = ChunkAlignment(np.arange(3, 3 + t), np.arange(t), np.zeros(t, dtype=np.int64))
    empty = ChunkAlignment(np.zeros(0, dtype=np.int64), np.full(t, -1), np.zeros(t, dtype=np.int64))
    mapped, aligned = ensemble._teacher_probs(0, model, [full, empty])
    assert not torch.isnan(mapped).any()
    assert aligned[1].sum() == 0 and mapped[1].abs().sum() == 0
    assert torch.allclose(mapped[0].sum(-1), torch.ones(t))


def test_a_teacher_whose_transformers_tokenizer_differs_from_its_file_is_refused(tmp_path, datasets, real_teachers,
                                                                                  monkeypatch):
    """tokenizer_config.json's class changes what transformers runs (emulated: a lowercasing normalizer the
    file lacks): the dump refuses in one line naming the teacher and an example, before writing; the real
    folders (transformers agrees with their files) dump."""
    from tokenizers import normalizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from conftest import dump_config
    from logitcache.dump import dump
    from logitcache.errors import LogitcacheError

    real = AutoTokenizer.from_pretrained

    def lowercasing(folder, **kwargs):
        tokenizer = real(folder, **kwargs)
        backend = tokenizer.backend_tokenizer
        backend.normalizer = normalizers.Lowercase()
        return PreTrainedTokenizerFast(tokenizer_object=backend)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lowercasing)
    out = tmp_path / "c.zarr"
    with pytest.raises(LogitcacheError, match="teacher llama3: its tokenizer.json and transformers' tokenizer .* "
                                              "encode cache row 0's text differently"):
        dump(dump_config(datasets["trained-bpe"], [real_teachers["llama3"]], out, combine="mean-probs", max_chunks=8,
                         min_coverage=0.2))
    assert not out.exists()
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", real)
    dump(dump_config(datasets["trained-bpe"], [real_teachers["llama3"]], out, combine="mean-probs", max_chunks=8,
                     min_coverage=0.2))
