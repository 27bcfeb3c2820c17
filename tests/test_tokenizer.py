"""Tokenizer identity and loading: a model is used with data only when its tokenizer gives the data's ids.

Identity: two tokenizers with equal identities encode every text the same (a hypothesis property over
tokenizers that differ in each field that can change ids, and in ways that cannot); each such field
changes the identity. Loading: tokenizer files that do not load are an error naming them; a folder with
only a sentencepiece model loads and encodes as sentencepiece does. `eval` and `train-student
--init-from` refuse a model with another tokenizer as `dump` refuses such a teacher.
"""
import io
import json
import random
import sys

import pytest
import transformers
from hypothesis import given, settings, strategies as st
from tokenizers import AddedToken, Tokenizer, normalizers, processors
from typer.testing import CliRunner

from conftest import synthetic_lines
from logitcache.errors import LogitcacheError
from logitcache.data.tokenizer import (find_tokenizer, folder_tokenizer_identity, load_tokenizer, special_ids,
                                       tokenizer_file_identity, tokenizer_identity, train_tokenizer)
from logitcache_cli.app import app

SAMPLE = synthetic_lines(30, 5) + [
    "the cat sees a cat", "Concatenate the cats", "THE CAT SEES", "an apple", "<s>the dog</s>", "a  cat  sees",
    "catcat cat.", "the apple and the cat in the morning again today",
]
WORD = "Ġapple"  # a vocabulary entry no merge reaches: only BPE's ignore_merges emits it whole


@pytest.fixture(scope="module")
def base_json() -> str:
    """A 300-id byte-level BPE trained on the tiny corpus, plus one whole-word vocabulary entry."""
    spec = json.loads(train_tokenizer(synthetic_lines(400, 1), 300).to_str())
    assert WORD not in spec["model"]["vocab"]
    spec["model"]["vocab"][WORD] = len(spec["model"]["vocab"])
    return json.dumps(spec)


ADDED = ("cat", "dog", "<mask>")  # a fixed pool, so an added token's id depends only on its content
FLAGS = ("lstrip", "rstrip", "single_word", "normalized", "special")


def make(base_json: str, ignore_merges=False, lowercase=False, added=(), post="none", truncation=None,
         padding=None, encode_special=False, form="object") -> Tokenizer:
    """A variant of the base tokenizer. `added` holds (content, {flag: bool}); `form` writes the same
    tokenizer differently (merges as "a b" strings, keys reordered) or not at all."""
    spec = json.loads(base_json)
    spec["model"]["ignore_merges"] = ignore_merges
    n = len(spec["model"]["vocab"])
    for content, flags in added:
        spec["added_tokens"].append({"id": n + ADDED.index(content), "content": content, "single_word": False,
                                     "lstrip": False, "rstrip": False, "normalized": True, "special": False} | flags)
    if form == "strings":
        spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
        spec = dict(reversed(list(spec.items())))
        spec["model"] = dict(reversed(list(spec["model"].items())))
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.post_processor = {
        "none": None,
        "empty": processors.TemplateProcessing(single="$A", pair="$A $B"),  # what transformers writes on save
        "bytelevel": processors.ByteLevel(trim_offsets=True),  # GPT-2's: offsets only
        "bos": processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]),
        "bos-eos": processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B </s>",
                                                 special_tokens=[("<s>", 1), ("</s>", 2)]),
    }[post]
    if truncation:
        tokenizer.enable_truncation(max_length=truncation)
    if padding:
        tokenizer.enable_padding(length=padding, pad_id=0, pad_token="<pad>")
    tokenizer.encode_special_tokens = encode_special
    return tokenizer


def encodings(tokenizer: Tokenizer) -> list:
    return [(tokenizer.encode(text, add_special_tokens=special).ids, tokenizer.encode(text, text[::-1]).ids)
            for text in SAMPLE for special in (False, True)]


# Each field that can change ids: (base settings, the same with that field changed); the two must encode
# some sample text differently, and so must have different identities.
CHANGES = {
    "ignore_merges": ({}, {"ignore_merges": True}),
    "post_processor": ({}, {"post": "bos"}),
    "post_processor eos": ({"post": "bos"}, {"post": "bos-eos"}),
    "lstrip": ({"added": [("cat", {})]}, {"added": [("cat", {"lstrip": True})]}),
    "rstrip": ({"added": [("cat", {})]}, {"added": [("cat", {"rstrip": True})]}),
    "single_word": ({"added": [("cat", {})]}, {"added": [("cat", {"single_word": True})]}),
    "normalized": ({"lowercase": True, "added": [("cat", {"normalized": True})]},
                   {"lowercase": True, "added": [("cat", {"normalized": False})]}),
    "special": ({"encode_special": True, "added": [("cat", {})]},
                {"encode_special": True, "added": [("cat", {"special": True})]}),
    "encode_special_tokens": ({}, {"encode_special": True}),
    "truncation": ({}, {"truncation": 4}),
    "padding": ({}, {"padding": 48}),
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_each_field_that_changes_ids_changes_the_identity(base_json, field):
    before, after = (make(base_json, **settings) for settings in CHANGES[field])
    assert encodings(before) != encodings(after)  # the field matters to encode ...
    assert tokenizer_identity(before) != tokenizer_identity(after)  # ... so it is in the identity


def test_ignore_merges_emits_the_whole_word(base_json):
    plain, whole = make(base_json), make(base_json, ignore_merges=True)
    apple = whole.token_to_id(WORD)
    assert apple not in plain.encode("an apple").ids and apple in whole.encode("an apple").ids


@pytest.mark.parametrize("a,b", [({}, {"form": "strings"}), ({"post": "none"}, {"post": "empty"}),
                                 ({"post": "none"}, {"post": "bytelevel"})])
def test_ways_of_writing_the_same_tokenizer_keep_the_identity(base_json, a, b):
    first, second = make(base_json, **a), make(base_json, **b)
    assert encodings(first) == encodings(second)
    assert tokenizer_identity(first) == tokenizer_identity(second)


def test_a_tokenizer_resaved_by_transformers_keeps_its_identity(tmp_path, base_json):
    plain = make(base_json, added=[("<mask>", {"special": True, "lstrip": True})])
    plain.save(str(tmp_path / "tokenizer.json"))
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json")).save_pretrained(tmp_path / "hf")
    resaved = tmp_path / "hf" / "tokenizer.json"
    assert json.loads(resaved.read_text())["post_processor"] is not None  # an empty template, written on save
    assert folder_tokenizer_identity(tmp_path / "hf") == tokenizer_file_identity(tmp_path / "tokenizer.json")
    assert encodings(load_tokenizer(resaved)) == encodings(plain)


def added_tokens():
    flags = st.fixed_dictionaries({flag: st.booleans() for flag in FLAGS})
    return st.lists(st.tuples(st.sampled_from(ADDED), flags), max_size=3, unique_by=lambda t: t[0])


SETTINGS = {
    "ignore_merges": st.booleans(), "lowercase": st.booleans(), "added": added_tokens(),
    "post": st.sampled_from(["none", "empty", "bytelevel", "bos", "bos-eos"]),
    "truncation": st.sampled_from([None, 6, 64]), "padding": st.sampled_from([None, 40]),
    "encode_special": st.booleans(), "form": st.sampled_from(["object", "strings"]),
}


@settings(max_examples=150, deadline=None)
@given(first=st.fixed_dictionaries(SETTINGS), changed=st.sets(st.sampled_from(sorted(SETTINGS))), data=st.data())
def test_equal_identity_means_equal_ids(base_json, first, changed, data):
    """Two tokenizers that differ in any subset of the settings: equal identities encode the sample alike."""
    second = dict(first) | {key: data.draw(SETTINGS[key], label=key) for key in sorted(changed)}
    a, b = make(base_json, **first), make(base_json, **second)
    if tokenizer_identity(a) == tokenizer_identity(b):
        assert encodings(a) == encodings(b)


def test_file_identity_follows_the_bytes_and_load_turns_off_truncation(tmp_path, base_json):
    path = tmp_path / "tokenizer.json"
    cut = make(base_json, truncation=4, padding=48)
    cut.save(str(path))
    loaded = load_tokenizer(path)  # documents are encoded whole and unpadded
    text = SAMPLE[-1]
    assert loaded.encode(text).ids == make(base_json).encode(text).ids and len(loaded.encode(text).ids) > 4
    assert tokenizer_file_identity(path) == tokenizer_identity(make(base_json))
    make(base_json, ignore_merges=True).save(str(path))  # the same path, other bytes: not the memoised identity
    assert tokenizer_file_identity(path) == tokenizer_identity(make(base_json, ignore_merges=True))
    assert tokenizer_file_identity(path) != tokenizer_identity(make(base_json))


# --- special ids --------------------------------------------------------------------------------------

def test_explicit_null_bos_means_no_bos(tmp_path, base_json):
    tokenizer = make(base_json)
    assert special_ids(tokenizer, tmp_path) == {"bos": 1, "eos": 2, "pad": 0}  # no config: the usual names
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "</s>"}))
    assert special_ids(tokenizer, tmp_path) == {"bos": None, "eos": 2, "pad": 0}  # pad_token absent: guessed
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "</s>"}, "pad_token": None}))
    assert special_ids(tokenizer, tmp_path) == {"bos": 2, "eos": 2, "pad": None}


# --- loading ------------------------------------------------------------------------------------------

def train_sentencepiece(lines: list[str], vocab_size: int = 120) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return model.getvalue()


@pytest.fixture(scope="module")
def sentencepiece_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentencepiece")
    (folder / "tokenizer.model").write_bytes(train_sentencepiece(synthetic_lines(400, 3)))
    return folder


def test_sentencepiece_folder_loads_and_encodes_as_sentencepiece(sentencepiece_folder):
    import sentencepiece as spm

    tokenizer = find_tokenizer(sentencepiece_folder)
    assert tokenizer is not None
    reference = spm.SentencePieceProcessor(model_file=str(sentencepiece_folder / "tokenizer.model"))
    lines = synthetic_lines(50, 9) + ["The cat sees the ball!", "a dog  holds  her book"]
    assert [tokenizer.encode(line, add_special_tokens=False).ids for line in lines] == reference.encode(lines)
    identity = folder_tokenizer_identity(sentencepiece_folder)
    assert identity == tokenizer_identity(tokenizer) == folder_tokenizer_identity(sentencepiece_folder)
    other = sentencepiece_folder.parent / "other-sentencepiece"
    other.mkdir()
    (other / "tokenizer.model").write_bytes(train_sentencepiece([line.upper() for line in synthetic_lines(400, 3)]))
    assert folder_tokenizer_identity(other) != identity


def test_sentencepiece_without_its_packages_names_the_file_and_package(sentencepiece_folder, monkeypatch):
    for module, package in (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)  # import fails, as where the package is not installed
            with pytest.raises(LogitcacheError, match=f"tokenizer.model.*needs the {package} package"):
                find_tokenizer(sentencepiece_folder)


@pytest.mark.parametrize("files", [{"tokenizer.model": b"not a sentencepiece model"},
                                   {"vocab.json": b'{"a": 0, "b": 1}'},  # no merges.txt
                                   {"vocab.json": b"{ not json"}])
def test_tokenizer_files_that_do_not_load_are_an_error(tmp_path, files):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(LogitcacheError, match=str(tmp_path / next(iter(files)))):
        find_tokenizer(tmp_path)
    with pytest.raises(LogitcacheError, match=str(tmp_path / next(iter(files)))):
        folder_tokenizer_identity(tmp_path)


# --- eval and --init-from ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """Data with another 300-id byte-level BPE (trained on other words)."""
    from logitcache.prepare import PrepareConfig, prepare

    rng = random.Random(0)
    words = ["zebra", "quilt", "vortex", "jumping", "oxygen", "whisky", "fjord", "kazoo", "pyramid", "lynx"]
    raw = tmp_path_factory.mktemp("other_raw")
    for split, n in (("train", 600), ("dev", 80), ("test", 80)):
        (raw / f"stories.{split}").write_text("".join(" ".join(rng.choices(words, k=8)) + ".\n" for _ in range(n)))
    out = tmp_path_factory.mktemp("other") / "data"
    prepare(PrepareConfig(data=raw, out=out, vocab_size=300, seq_len=32))
    return out


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory, tiny_data):
    """A tiny llama saved with the tiny data's tokenizer (as logitcache saves models), and a copy without it."""
    from logitcache.data.prepared import load_data, tokenizer_saver
    from logitcache.teachers.models import build_model, get_preset

    root = tmp_path_factory.mktemp("models")
    data = load_data(tiny_data)
    model = build_model(get_preset("llama-tiny"), data.vocab_size, specials=data.special_ids)
    model.save_pretrained(root / "with")
    tokenizer_saver(data)(root / "with")
    model.save_pretrained(root / "bare")
    return root / "with", root / "bare"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_eval_refuses_a_model_with_another_tokenizer(tiny_data, other_data, model_folders):
    model, _ = model_folders
    assert load_tokenizer(tiny_data / "tokenizer.json").get_vocab_size() == 300
    assert load_tokenizer(other_data / "tokenizer.json").get_vocab_size() == 300  # the size alone cannot tell
    result = invoke("eval", model, "--data", other_data, "--max-chunks", 4, "--device", "cpu")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "different tokenizer" in lines[0], result.output
    assert "Traceback" not in result.output and "differ in: model" in lines[0]  # vocabulary and merges
    result = invoke("eval", model, "--data", tiny_data, "--max-chunks", 4, "--device", "cpu", "--json", "-")
    assert result.exit_code == 0, result.output


def test_eval_warns_for_a_model_without_tokenizer(tiny_data, model_folders, caplog):
    from logitcache.evaluate import EvalConfig, evaluate

    _, bare = model_folders
    with caplog.at_level("WARNING"):
        evaluate(EvalConfig(models=(bare,), data=tiny_data, max_chunks=4, device="cpu"))
    assert f"model {bare} has no tokenizer" in caplog.text


def test_eval_refuses_a_model_whose_tokenizer_files_do_not_load(tmp_path, tiny_data, model_folders):
    import shutil

    _, bare = model_folders
    broken = tmp_path / "broken"
    shutil.copytree(bare, broken)
    (broken / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    result = invoke("eval", broken, "--data", tiny_data, "--max-chunks", 4, "--device", "cpu")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and str(broken / "tokenizer.model") in lines[0], result.output


def test_init_from_refuses_a_model_with_another_tokenizer(tmp_path, tiny_data, other_data, model_folders, caplog):
    from logitcache.data.prepared import load_data
    from logitcache.config import StudentConfig
    from logitcache.train_student import student_model

    model, bare = model_folders

    def config(init_from):
        return StudentConfig(cache=tmp_path / "unused.zarr", data=tiny_data, out=tmp_path / "s", init_from=init_from)

    with pytest.raises(LogitcacheError, match=f"--init-from {model} has a different tokenizer"):
        student_model(config(model), load_data(other_data))
    assert student_model(config(model), load_data(tiny_data)).config.vocab_size == 300
    with caplog.at_level("WARNING"):
        student_model(config(bare), load_data(other_data))
    assert f"--init-from {bare} has no tokenizer" in caplog.text
    caplog.clear()
    # a config alone is a random init: no ids learned, nothing to compare
    (tmp_path / "config").mkdir()
    transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                             vocab_size=300).save_pretrained(tmp_path / "config")
    with caplog.at_level("WARNING"):
        student_model(config(tmp_path / "config"), load_data(other_data))
    assert "no tokenizer" not in caplog.text
