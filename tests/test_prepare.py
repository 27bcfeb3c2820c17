import json

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from logitcache.data.cleaners import cleaner_for
from logitcache.prepare import PrepareConfig, chunk, prepare
from logitcache.data.prepared import load_data, validation_indices
from logitcache.errors import LogitcacheError
from logitcache.data.tokenizer import EOS_ID, load_tokenizer


def test_chunking_keeps_every_token():
    ids = np.arange(1000)
    chunks = chunk(ids, 128)
    assert chunks.shape == (7, 128)
    assert np.array_equal(chunks.reshape(-1), ids[:896])  # contiguous, in order, remainder dropped


def test_store_layout_and_attributes(tiny_data):
    data = load_data(tiny_data)
    attrs = data.attrs
    assert attrs["seq_len"] == 32 and attrs["vocab_size"] == 300
    assert set(attrs["sources"]) == {"childes", "stories"}
    for split in ("train", "dev", "test"):
        rows = data.store.split(split)
        assert rows.dtype == np.uint16 and rows.shape[1] == 32 and rows.shape[0] > 0
    assert len(attrs["fingerprint"]) == 64


def test_decoding_the_store_reproduces_cleaned_text(tiny_raw, tiny_data):
    data = load_data(tiny_data)
    tokenizer = load_tokenizer(data.tokenizer_path)
    ids = data.store.split("train").reshape(-1).tolist()
    # each non-empty cleaned line is a document, <s> line </s>, sources in sorted order; the final remainder
    # (< 32 tokens) is dropped
    documents = tokenizer.decode(ids, skip_special_tokens=False).split("</s>")
    expected = ["<s>" + line for s in ("childes", "stories")
                for line in cleaner_for(s)((tiny_raw / f"{s}.train").read_text()).split("\n") if line.strip()]
    assert documents[:-1] == expected[:len(documents) - 1] and len(documents) >= len(expected) - 4
    assert expected[len(documents) - 1].startswith(documents[-1])


def test_tokenizer_specials_and_transformers_loading(tiny_data):
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny_data / "tokenizer.json"))
    assert tok.convert_tokens_to_ids(["<pad>", "<s>", "</s>"]) == [0, 1, 2]
    ids = tok.encode("The cat sees a dog.")
    assert ids[0] == 1 and tok.decode(ids, skip_special_tokens=True) == "The cat sees a dog."  # the template's <s>


def test_tokenizer_is_trained_on_train_only(tmp_path, tiny_raw):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    (raw / "stories.dev").write_text("zyzzyva quixotic zyzzyva quixotic\n" * 300)
    prepare(PrepareConfig(data=raw, out=tmp_path / "data", vocab_size=300, seq_len=32))
    vocab = json.loads((tmp_path / "data" / "tokenizer.json").read_text())["model"]["vocab"]
    assert not any("zyzz" in token for token in vocab)


def test_prepare_report_counts(tmp_path, tiny_raw):
    report = prepare(PrepareConfig(data=tiny_raw, out=tmp_path / "d", vocab_size=300, seq_len=32))
    payload = report.to_json()
    assert set(payload) >= {"splits", "vocab_size", "fingerprint", "sources"}
    total = sum(s["tokens"] for s in payload["sources"].values())
    chunks = sum(v["chunks"] for v in payload["splits"].values())
    assert chunks * 32 <= total + 3 and payload["splits"]["train"]["tokens"] == payload["splits"]["train"]["chunks"] * 32


def test_bad_bytes_are_replaced_and_counted(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "x.train").write_bytes(b"hello \xff\xfe world\n" * 200)
    (raw / "x.dev").write_bytes(b"hello world\n" * 20)
    report = prepare(PrepareConfig(data=raw, out=tmp_path / "d", vocab_size=280, seq_len=8))
    assert report.sources["x"]["replaced_bytes"] == 400


def test_missing_dev_split_is_refused(tmp_path):
    """No dev chunk is refused: validation would read 0.0 and the first checkpoint would stay best forever."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "x.train").write_text("hello world\n" * 200)
    with pytest.raises(LogitcacheError, match="dev split has no chunk"):
        prepare(PrepareConfig(data=raw, out=tmp_path / "d", vocab_size=280, seq_len=8))


def test_validation_subset_is_fixed():
    a, b = validation_indices(20000, 8192, 0), validation_indices(20000, 8192, 0)
    assert np.array_equal(a, b) and len(np.unique(a)) == 8192
    assert np.array_equal(validation_indices(100, 8192), np.arange(100))


def test_missing_or_empty_raw_dir(tmp_path):
    with pytest.raises(LogitcacheError, match="does not exist"):
        prepare(PrepareConfig(data=tmp_path / "nope", out=tmp_path / "d"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogitcacheError, match="train"):
        prepare(PrepareConfig(data=tmp_path / "empty", out=tmp_path / "d"))


def test_documents_are_joined_with_eos(tiny_data):
    ids = load_data(tiny_data).store.split("train").reshape(-1)
    assert (ids == EOS_ID).sum() >= 1


@pytest.mark.parametrize("names", [("babylm_10M", "babylm_dev", "babylm_test"), ("train_10M", "dev", "test")])
def test_babylm_layout_takes_the_track_and_its_dev_and_test(tmp_path, names):
    """BabyLM as people have it on disk: the 10M track beside the dev and test folders (and a 100M track
    that must not leak into the 10M run); dev is found, so validation never reads 0.0."""
    from logitcache.prepare import find_raw_files

    train, dev, test = (tmp_path / n for n in names)
    for folder, split in ((train, "train"), (dev, "dev"), (test, "test")):
        folder.mkdir()
        for source in ("aochildes", "wikipedia"):
            (folder / f"{source}.{split}").write_text("text\n")
    (tmp_path / names[0].replace("10M", "100M")).mkdir()
    (tmp_path / names[0].replace("10M", "100M") / "aochildes.train").write_text("the big track\n")
    found = find_raw_files(tmp_path)
    assert sorted(found) == sorted((s, split) for s in ("aochildes", "wikipedia") for split in ("train", "dev", "test"))
    assert all(paths[0].parent.name == {"train": names[0], "dev": names[1], "test": names[2]}[split]
               for (_, split), paths in found.items())
    assert find_raw_files(train) == found  # the track folder itself finds its siblings
    assert find_raw_files(tmp_path, "100M")[("aochildes", "train")][0].read_text() == "the big track\n"


def test_prepare_writes_a_checksum_per_token_store_chunk(tiny_data):
    """One crc32c per chunk file, equal to the crc32c of the rows zarr decodes from that file."""
    import crc32c
    import zarr

    group = zarr.open_group(str(tiny_data / "tokens.zarr"), mode="r")
    for name in ("train", "dev", "test"):
        array = group[name]
        sums = array.attrs["logitcache"]["chunk_crc32c"]
        files = [p for p in (tiny_data / "tokens.zarr" / name / "c").rglob("*") if p.is_file()]
        r = array.chunks[0]
        assert len(sums) == len(files) == -(-array.shape[0] // r) > 0
        assert sums == [crc32c.crc32c(np.ascontiguousarray(array[i * r:(i + 1) * r]).tobytes()) for i in range(len(sums))]
        assert any(c.to_dict() == {"name": "zstd", "configuration": {"level": 3, "checksum": True}}
                   for c in array.metadata.codecs)


def test_token_store_reads_many_chunks_and_an_empty_split(tmp_path):
    from logitcache.store import TokenStore, write_token_store

    rows = np.random.default_rng(0).integers(0, 300, (1000, 16)).astype(np.uint16)
    write_token_store(tmp_path / "t.zarr", {"train": rows, "test": rows[:0]}, {"kind": "tokens"}, rows_per_chunk=64)
    store = TokenStore(tmp_path / "t.zarr")
    assert store.n_chunks("train") == 16 and store.unchecked_splits() == []
    assert np.array_equal(store.split("train"), rows)
    assert store.split("test").shape == (0, 16)
    with pytest.raises(LogitcacheError, match="no split 'dev'"):
        store.split("dev")


def _subtitle_corpus(raw, credit_every: int):
    """open_subtitles with a credit line every `credit_every` lines, plus plain stories; returns the credits."""
    raw.mkdir()
    credits = []
    lines = []
    for i in range(400):
        if i % credit_every == 0:
            credits.append(f"Synced and corrected by team {i}")
            lines.append(credits[-1])
        lines.append(f"Where were you on day {i}? I translated it.")
    (raw / "open_subtitles.train").write_text("\n".join(lines) + "\n")
    (raw / "open_subtitles.dev").write_text("Where were you? Here.\n" * 40)
    (raw / "stories.train").write_text("The cat sat on the mat.\n" * 100)
    return credits


def test_prepare_report_gives_what_each_cleaner_step_removed(tmp_path, caplog):
    credits = _subtitle_corpus(tmp_path / "raw", credit_every=4)
    with caplog.at_level("WARNING", logger="logitcache.prepare"):
        prepare(PrepareConfig(data=tmp_path / "raw", out=tmp_path / "d", vocab_size=280, seq_len=8))
    report = json.loads((tmp_path / "d" / "prepare_report.json").read_text())
    subs = report["sources"]["open_subtitles"]["cleaning"]
    assert subs["cleaner"] == "subtitles"
    assert subs["removed"]["credits"] == {"chars": sum(len(c.replace(" ", "")) for c in credits), "lines": len(credits)}
    assert subs["lines"] == 400 + len(credits) + 40
    assert report["sources"]["stories"]["cleaning"]["removed"]["spacing"] == {"chars": 0, "lines": 0}
    assert len(report["warnings"]) == 1 and "'open_subtitles'" in report["warnings"][0] and "'credits'" in report["warnings"][0]
    assert [r.getMessage() for r in caplog.records if "cleaner step" in r.getMessage()] == report["warnings"]


def test_prepare_cli_surfaces_cleaner_warnings(tmp_path):
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    _subtitle_corpus(tmp_path / "raw", credit_every=4)
    result = CliRunner().invoke(app, ["prepare", "--data", str(tmp_path / "raw"), "--out", str(tmp_path / "d"),
                                      "--vocab-size", "280", "--seq-len", "8"])
    assert result.exit_code == 0, result.output
    assert "removed more than expected" in result.output
    row = next(line for line in result.output.splitlines() if "open_subtitles" in line)
    assert "!" in row


def test_a_few_credit_lines_give_no_warning(tmp_path):
    _subtitle_corpus(tmp_path / "raw", credit_every=100)
    report = prepare(PrepareConfig(data=tmp_path / "raw", out=tmp_path / "d", vocab_size=280, seq_len=8))
    assert report.sources["open_subtitles"]["cleaning"]["removed"]["credits"]["lines"] == 4
    assert report.warnings == []


def test_every_prepare_setting_is_read_by_prepare():
    """A prepare option that prepare never reads is refused as unknown instead of being ignored."""
    import dataclasses
    import inspect

    import logitcache.prepare as data_module

    source = inspect.getsource(data_module)
    unread = [f.name for f in dataclasses.fields(PrepareConfig) if f"config.{f.name}" not in source]
    assert unread == []


def test_validation_subset_options_belong_to_training_not_prepare(tmp_path, tiny_raw):
    """The validation subset of dev is picked by each training run (train.val_chunks); prepare stores all of dev."""
    from typer.testing import CliRunner

    from logitcache.run import load_run_config
    from logitcache_cli.app import app

    for flag in ("--val-chunks", "--seed"):
        result = CliRunner().invoke(app, ["prepare", "--data", str(tiny_raw), "--out", str(tmp_path / "d"), flag, "8"])
        assert result.exit_code == 2 and flag in result.output and "Traceback" not in result.output
        assert not (tmp_path / "d").exists()
    for key in ("val_chunks", "seed"):
        toml = tmp_path / f"{key}.toml"
        toml.write_text(f'[data]\n{key} = 16\n[[teachers]]\nname = "a"\narch = "llama"\npreset = "llama-tiny"\n')
        with pytest.raises(LogitcacheError, match=f"unknown config key 'data.{key}'"):
            load_run_config(toml)


def test_a_literal_special_token_in_the_text_is_refused_and_the_existing_data_is_kept(tmp_path, tiny_raw, tiny_data):
    """Text spelling `</s>` would become an EOS mid-document with the trained tokenizer: one line naming the
    token, split and source, exit 2, and an existing data dir (even with --overwrite) byte for byte as it was."""
    import shutil

    from typer.testing import CliRunner

    from logitcache_cli.app import app

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    with open(raw / "stories.dev", "a") as f:
        f.write("the story ends here </s> and goes on\n")
    out = tmp_path / "data"
    shutil.copytree(tiny_data, out)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    result = CliRunner().invoke(app, ["prepare", "--data", str(raw), "--out", str(out), "--vocab-size", "300",
                                      "--seq-len", "32", "--overwrite"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'</s>' in 1 document(s)" in errors[0] and "dev text" in errors[0]
    assert "source stories" in errors[0] and "Traceback" not in result.output
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_a_pretrained_tokenizer_keeps_its_specials_in_the_text_and_says_so(tmp_path, tiny_raw, tiny_data, caplog):
    """With --tokenizer a literal special is that tokenizer's convention (<|endoftext|> between documents):
    encoded as its id, as the tokenizer itself encodes the text, with a warning naming it."""
    import logging
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    line = "a cat </s> a dog"
    (raw / "childes.train").write_text(line + "\n" + (raw / "childes.train").read_text())  # the stream's first document
    with caplog.at_level(logging.WARNING, logger="logitcache.prepare"):
        prepare(PrepareConfig(data=raw, out=tmp_path / "data", tokenizer=tiny_data / "tokenizer.json", seq_len=32))
    assert [r.getMessage().split(" ")[0] for r in caplog.records if "spell a special token" in r.getMessage()] == ["1"]
    tokenizer = load_tokenizer(tiny_data / "tokenizer.json")
    ids = tokenizer.encode(line, add_special_tokens=False).ids
    assert EOS_ID in ids  # the tokenizer's own reading of the line
    stream = load_data(tmp_path / "data").store.split("train").reshape(-1).tolist()
    assert stream[:len(ids) + 2] == [1] + ids + [EOS_ID]  # <s>, the line as the tokenizer reads it, </s>
