"""prepare from the text people have (JSONL, JSONL.gz, Parquet, saved datasets, folders) and with a
pretrained tokenizer (its own BOS/EOS conventions), from the CLI."""
import gzip
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import synthetic_lines
from logitcache.prepare import PrepareConfig, prepare
from logitcache.data.prepared import load_data
from logitcache.errors import LogitcacheError
from logitcache.data.inputs import READERS, read_documents
from logitcache.data.tokenizer import load_tokenizer, tokenizer_identity
from logitcache_cli.app import app

runner = CliRunner()


def documents(n, seed):
    lines = synthetic_lines(4 * n, seed)
    return [{"text": " ".join(lines[4 * i:4 * i + 4]), "source": "stories" if i % 2 else "childes"} for i in range(n)]


def write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_saved_dataset(path, records):
    import datasets

    datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


WRITERS = {"jsonl": lambda p, r: write_jsonl(p.with_suffix(".jsonl"), r),
           "jsonl.gz": lambda p, r: write_jsonl(p.with_suffix(".jsonl.gz"), r, gz=True),
           "parquet": lambda p, r: write_parquet(p.with_suffix(".parquet"), r),
           "saved dataset": write_saved_dataset}


def test_every_reader_has_a_writer_here():
    """Each suffix of inputs.READERS is read back below (.txt, one document per file, in the folder test)."""
    assert {suffix.lstrip(".") for suffix in READERS} - {"txt"} == set(WRITERS) - {"saved dataset"}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_format_reads_the_same_documents(tmp_path, kind):
    records = documents(30, 1)
    path = WRITERS[kind](tmp_path / "train", records)
    got = list(read_documents(path, "text", "source"))
    assert got == [(r["source"], r["text"]) for r in records]


def test_folder_of_files_in_name_order_and_txt_is_one_document(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"text": "second"}])
    write_jsonl(folder / "a.jsonl", [{"text": "first"}])
    (folder / "c.txt").write_text("third\nstill third\n")
    assert [t for _, t in read_documents(folder)] == ["first", "second", "third\nstill third\n"]


@pytest.mark.parametrize("content,needle", [('{"body": "x"}\n', "no field 'text'"), ("not json\n", "not JSON"),
                                            ('{"text": 3}\n', "not text")])
def test_bad_records_are_one_clear_error(tmp_path, content, needle):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(LogitcacheError, match=needle):
        list(read_documents(path))


def test_prepare_from_jsonl_with_a_pretrained_tokenizer_from_the_cli(tmp_path, tiny_data):
    """A Llama-style tokenizer folder (its template prepends <s>): every document becomes <s> ids </s>,
    the tokenizer's identity is recorded, and no BPE is trained."""
    from tokenizers import processors

    tokenizer = load_tokenizer(tiny_data / "tokenizer.json")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    folder = tmp_path / "pretrained"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    train = write_jsonl(tmp_path / "train.jsonl", documents(300, 2))
    dev = write_parquet(tmp_path / "dev.parquet", documents(40, 3))
    test = write_saved_dataset(tmp_path / "test_ds", documents(40, 4))
    out = tmp_path / "data"
    result = runner.invoke(app, ["prepare", "--train", str(train), "--dev", str(dev), "--test", str(test),
                                 "--tokenizer", str(folder), "--out", str(out), "--seq-len", "32"])
    assert result.exit_code == 0, result.output
    data = load_data(out)
    assert data.attrs["tokenizer_identity"] == tokenizer_identity(tokenizer) == data.tokenizer_identity
    assert data.special_ids == {"bos": 1, "eos": 2, "pad": 0} and data.vocab_size == tokenizer.get_vocab_size()
    stream = data.store.split("train").reshape(-1)
    first = [tokenizer.encode(r["text"]).ids for r in documents(300, 2)[:3]]  # with the template's <s>
    expected = [i for ids in first for i in ids + [2]]
    n = min(len(expected), stream.size)
    assert n > 40 and stream[:n].tolist() == expected[:n]
    assert (stream == 1).sum() >= 20 and stream[0] == 1  # one <s> per document
    assert data.store.num_rows("dev") > 0 and data.store.num_rows("test") > 0


def test_prepare_refuses_mixed_or_incomplete_inputs(tmp_path, tiny_raw):
    train = write_jsonl(tmp_path / "t.jsonl", documents(10, 1))
    with pytest.raises(LogitcacheError, match="not both"):
        PrepareConfig(out=tmp_path / "d", data=tiny_raw, train=train)
    with pytest.raises(LogitcacheError, match="needs --dev"):
        PrepareConfig(out=tmp_path / "d", train=train)
    result = runner.invoke(app, ["prepare", "--train", str(train), "--dev", str(tmp_path / "missing.jsonl"),
                                 "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_source_field_picks_the_cleaner(tmp_path):
    records = [{"text": "*CHI:\tthe cat sees a dog .", "source": "childes"}] * 200
    train = write_jsonl(tmp_path / "t.jsonl", records)
    dev = write_jsonl(tmp_path / "d.jsonl", records[:40])
    with_source = prepare(PrepareConfig(out=tmp_path / "a", train=train, dev=dev, source_field="source", vocab_size=280,
                                        seq_len=8))
    without = prepare(PrepareConfig(out=tmp_path / "b", train=train, dev=dev, vocab_size=280, seq_len=8))
    # the childes cleaner drops the speaker tag and the space before '.'; the basic one only normalises spaces
    assert with_source.sources["childes"]["words"] < without.sources["text"]["words"]
    assert np.array(load_data(tmp_path / "a").store.split("train")).size > 0


def _surrogate_jsonl(path):
    path.write_text('{"text": "a fine line"}\n{"text": "a lone \\ud800 surrogate"}\n')  # valid JSON, no UTF-8 text
    return path


def _parquet_of(array):
    def write(path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": array()}), path)
        return path
    return write


def _not_utf8():
    import pyarrow as pa

    return pa.array([b"fine", b"bad \xff\xfe"], type=pa.binary()).view(pa.string())  # a string column, bytes unchecked


def _binary():
    import pyarrow as pa

    return pa.array([b"fine"], type=pa.binary())


@pytest.mark.parametrize("name,write,needle", [
    ("t.jsonl", _surrogate_jsonl, r"t\.jsonl:2: field 'text' holds '\\ud800'"),
    ("t.parquet", _parquet_of(_not_utf8), r"t\.parquet: row 2: the text is not UTF-8"),
    ("t.parquet", _parquet_of(_binary), r"t\.parquet: column 'text' is binary, not text"),
    ("t.parquet", _parquet_of(lambda: [1, 2]), r"t\.parquet: column 'text' is int64, not text"),
    ("ds", lambda p: write_saved_dataset(p, [{"text": 3}]), r"ds: column 'text' is int64, not text"),
], ids=["jsonl-surrogate", "parquet-not-utf8", "parquet-binary", "parquet-int", "dataset-int"])
def test_text_that_is_not_utf8_text_is_refused_at_its_row(tmp_path, name, write, needle):
    """Each reader yields only str that encodes as UTF-8, or refuses the file and row in one error (not the
    repr of bytes or a number, not a UnicodeError later in the tokenizer)."""
    path = write(tmp_path / name)
    with pytest.raises(LogitcacheError, match=needle):
        list(read_documents(path))


@pytest.mark.parametrize("pretrained", [False, True], ids=["trained-bpe", "tokenizer"])
def test_prepare_refuses_a_lone_surrogate_in_one_line(tmp_path, tiny_data, pretrained):
    train = write_jsonl(tmp_path / "train.jsonl", documents(50, 1))
    train.write_text(train.read_text() + '{"text": "x \\udc80 y"}\n')  # line 51
    dev = write_jsonl(tmp_path / "dev.jsonl", documents(20, 2))
    args = ["prepare", "--train", str(train), "--dev", str(dev), "--out", str(tmp_path / "data"), "--seq-len", "8"]
    args += ["--tokenizer", str(tiny_data / "tokenizer.json")] if pretrained else ["--vocab-size", "280"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {train}:51: field 'text' holds '\\udc80' at character 3, a lone UTF-16 surrogate (no Unicode character): "
        "fix or drop the record"]
    assert not (tmp_path / "data").exists()


def test_bad_bytes_of_txt_and_jsonl_are_replaced_and_counted_per_source(tmp_path):
    """Bytes that are not UTF-8 become U+FFFD as in the raw layout, and prepare's "bad bytes replaced" counts
    them (a U+FFFD the file spells is text, not counted)."""
    train = write_jsonl(tmp_path / "t.jsonl", documents(200, 1))
    train.write_bytes(train.read_bytes().replace(b"cat", b"c\xfft", 3))
    report = prepare(PrepareConfig(out=tmp_path / "d", train=train, dev=write_jsonl(tmp_path / "d.jsonl", documents(40, 2)),
                                   vocab_size=280, seq_len=8))
    assert report.sources["text"]["replaced_bytes"] == 3
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"caf\xe9 \xff ok \xef\xbf\xbd\n")  # two bad bytes, one real U+FFFD
    (folder / "b.jsonl").write_bytes(b'{"text": "x \xfe y", "source": "childes"}\r\n{"text": "clean", "source": "childes"}\n')
    replaced = {}
    assert list(read_documents(folder / "a.txt", replaced=replaced)) == [("", "caf\ufffd \ufffd ok \ufffd\n")]
    assert list(read_documents(folder / "b.jsonl", "text", "source", replaced)) == [("childes", "x \ufffd y"),
                                                                                     ("childes", "clean")]
    assert replaced == {"": 2, "childes": 1}
