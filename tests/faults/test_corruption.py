"""Flip, truncate and delete chunk files and metadata of a cache and of a checkpoint: every fault is
reported by block (verify), refused with one clear line (open, train-student, resume), never trained on."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import tiny_train
from logitcache import open_cache
from logitcache.store import block_chunk_path, verify_cache
from logitcache.errors import CacheCorruptError, LogitcacheError
from logitcache.train_student import StudentConfig, train_student
from logitcache.train_teacher import TeacherConfig, train_teacher


def flip(path, offset=None):
    blob = bytearray(path.read_bytes())
    i = len(blob) // 2 if offset is None else offset
    blob[i] ^= 0x5A
    path.write_bytes(bytes(blob))


def truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


DATA_FAULTS = [(array, action, block) for array in ("tokens", "topk_ids", "topk_probs")
               for action in ("flip", "truncate", "delete") for block in (0, 4)]
MARKER_FAULTS = [("checksum", "flip", 1), ("checksum", "delete", 2), ("done", "delete", 3), ("done", "flip", 1)]


@pytest.mark.parametrize("array,action,block", DATA_FAULTS + MARKER_FAULTS,
                         ids=[f"{a}-{b}-block{c}" for a, b, c in DATA_FAULTS + MARKER_FAULTS])
def test_verify_reports_each_fault_by_block(tiny_cache, copy_of, array, action, block):
    cache = copy_of(tiny_cache)
    path = block_chunk_path(cache, array, block)
    {"flip": flip, "truncate": truncate, "delete": lambda p: p.unlink()}[action](path)
    problems = verify_cache(cache)
    assert len(problems) == 1 and problems[0].startswith(f"block {block}:"), problems


@pytest.mark.parametrize("target", ["group", "topk_probs", "done"])
@pytest.mark.parametrize("action", ["garble", "delete"])
def test_broken_metadata_is_one_clear_error(tiny_cache, copy_of, target, action):
    cache = copy_of(tiny_cache)
    meta = cache / "zarr.json" if target == "group" else cache / target / "zarr.json"
    if action == "delete":
        meta.unlink()
    else:
        meta.write_text(meta.read_text()[:40])
    with pytest.raises(LogitcacheError):
        open_cache(cache)
    with pytest.raises(LogitcacheError):  # verify refuses it too (a separate call: it must raise on its own)
        verify_cache(cache)


def test_foreign_attributes_are_refused(tiny_cache, copy_of):
    cache = copy_of(tiny_cache)
    meta = json.loads((cache / "zarr.json").read_text())
    meta["attributes"]["logitcache"]["schema_version"] = 99
    (cache / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(LogitcacheError, match="schema"):
        open_cache(cache)


def test_train_student_refuses_missing_done_markers(tmp_path, tiny_data, tiny_cache, copy_of):
    cache = copy_of(tiny_cache)
    block_chunk_path(cache, "done", 2).unlink()
    with pytest.raises(LogitcacheError, match="incomplete.*block 2"):
        train_student(StudentConfig(cache=cache, data=tiny_data, out=tmp_path / "s", preset="llama-tiny",
                                    train=tiny_train(2)))


@pytest.mark.parametrize("action", ["flip", "truncate"])
def test_train_student_stops_on_a_bad_block_and_never_trains_on_it(tmp_path, tiny_data, tiny_cache, copy_of, action):
    cache = copy_of(tiny_cache)
    {"flip": flip, "truncate": truncate}[action](block_chunk_path(cache, "topk_ids", 1))
    with pytest.raises(CacheCorruptError, match="block 1"):
        train_student(StudentConfig(cache=cache, data=tiny_data, out=tmp_path / "s", preset="llama-tiny",
                                    shuffle_buffer=8, train=tiny_train(10)))
    report = train_student(StudentConfig(cache=cache, data=tiny_data, out=tmp_path / "s2", preset="llama-tiny",
                                         shuffle_buffer=8, skip_bad_blocks=True, train=tiny_train(4)))
    assert report.skipped_blocks == [1]


@pytest.mark.parametrize("action", ["flip", "truncate"])
def test_corrupt_checkpoint_is_refused_on_resume(tmp_path, tiny_data, action):
    out = tmp_path / "t"
    config = TeacherConfig(data=tiny_data, out=out, arch="llama", preset="llama-tiny", train=tiny_train(4))
    train_teacher(config)
    state = out / "checkpoint" / "state.pt"
    {"flip": lambda p: flip(p, 100), "truncate": truncate}[action](state)
    with pytest.raises(LogitcacheError, match="checkpoint"):
        train_teacher(config, resume=True)


# The token store (tokens.zarr): bit flips and altered tokens are refused by every read path.

def flip_bit(path, bit):
    blob = bytearray(path.read_bytes())
    blob[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(blob))


def alter_tokens(store, array, row, vocab_size=300):
    """Change one token through zarr: the chunk stays a valid, decodable chunk holding other tokens."""
    import zarr

    tokens = zarr.open_group(str(store), mode="r+")[array]
    tokens[row, 3] = (int(tokens[row, 3]) + 1) % vocab_size


def verify_cli(path):
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    return CliRunner().invoke(app, ["verify", str(path)])


def test_token_store_bit_flips_are_refused_by_every_read_path(tmp_path, tiny_data, tiny_teachers, copy_of):
    """40 seeded single-bit flips in the train chunk: none reads back as tokens; each is refused by the
    data reader (every stage's loader), by dump before it creates anything, and by `verify DATA_DIR`."""
    import numpy as np

    from conftest import dump_config
    from logitcache.data.prepared import load_data
    from logitcache.dump import dump

    chunk = tiny_data / "tokens.zarr" / "train" / "c" / "0" / "0"
    bits = np.random.default_rng(0).choice(chunk.stat().st_size * 8, 40, replace=False)
    for bit in bits:
        data = tmp_path / f"data-{bit}"
        shutil.copytree(tiny_data, data)
        flip_bit(data / "tokens.zarr" / "train" / "c" / "0" / "0", int(bit))
        with pytest.raises(LogitcacheError, match=r"split 'train' chunk 0 \(rows 0-"):
            load_data(data).store.split("train")
        with pytest.raises(LogitcacheError, match="split 'train' chunk 0"):
            dump(dump_config(data, tiny_teachers, data / "cache.zarr"))
        assert not (data / "cache.zarr").exists()
        result = verify_cli(data)
        assert result.exit_code == 1, (bit, result.output)
        assert "FAIL split 'train' chunk 0 (rows 0-" in result.output and "train/c/0/0" in result.output
    assert load_data(copy_of(tiny_data)).store.split("train").shape[0] > 0  # the fixture itself is sound


def test_altered_tokens_in_a_valid_chunk_are_refused(tmp_path, tiny_data, tiny_teachers, copy_of):
    """A chunk rewritten with other tokens decodes cleanly (its zstd frame is valid): only the chunk
    checksum sees it. The loader, dump, eval and verify refuse it."""
    from conftest import dump_config
    from logitcache.data.prepared import load_data
    from logitcache.dump import dump
    from logitcache.evaluate import EvalConfig, evaluate

    data = copy_of(tiny_data)
    alter_tokens(data / "tokens.zarr", "train", 5)
    with pytest.raises(LogitcacheError, match="split 'train' chunk 0 .*checksum mismatch"):
        load_data(data).store.split("train")
    with pytest.raises(LogitcacheError, match="checksum mismatch"):
        dump(dump_config(data, tiny_teachers, tmp_path / "cache.zarr"))
    assert not (tmp_path / "cache.zarr").exists()
    with pytest.raises(LogitcacheError, match="checksum mismatch"):
        evaluate(EvalConfig(models=(tiny_teachers[0],), data=data, split="train", device="cpu"))
    assert load_data(data).store.split("dev").shape[0] > 0  # the other splits still read
    result = verify_cli(data)
    assert result.exit_code == 1 and "FAIL split 'train' chunk 0" in result.output and "checksum mismatch" in result.output


def test_verify_data_dir_names_the_one_bad_chunk_among_many(tmp_path, tiny_data, copy_of):
    import zarr

    from logitcache.data.prepared import load_data
    from logitcache.store import write_token_store

    data = copy_of(tiny_data)
    store = load_data(data).store
    splits = {name: store.split(name) for name in ("train", "dev", "test")}
    texts = {name: tuple(array[:] for _, array in store.text_arrays(name)) for name in splits if store.has_text(name)}
    write_token_store(data / "tokens.zarr", splits, store.attrs, rows_per_chunk=64, texts=texts)  # same data, 64-row chunks
    assert zarr.open_group(str(data / "tokens.zarr"), mode="r")["train"].chunks == (64, 32)
    result = verify_cli(data)
    assert result.exit_code == 0 and "every chunk intact" in result.output, result.output
    alter_tokens(data / "tokens.zarr", "train", 3 * 64 + 10)
    result = verify_cli(data)
    assert result.exit_code == 1
    fails = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert fails == ["FAIL split 'train' chunk 3 (rows 192-255, file train/c/3/0): checksum mismatch "
                     "(the stored tokens changed after prepare)"], result.output


def test_token_store_without_chunk_checksums_warns_and_verify_checks_its_fingerprint(tmp_path, tiny_data, copy_of, caplog):
    """A store whose split arrays carry no checksums reads with a warning; verify still recomputes
    the data fingerprint and the tokenizer's sha256."""
    from logitcache.data.prepared import load_data

    data = copy_of(tiny_data)
    for name in ("train", "dev", "test"):
        meta_path = data / "tokens.zarr" / name / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["attributes"].pop("logitcache", None)
        meta_path.write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        rows = load_data(data).store.split("train")
    assert rows.shape[0] > 0 and "no chunk checksums" in caplog.text and "re-run `logitcache prepare`" in caplog.text
    result = verify_cli(data)
    assert result.exit_code == 0 and "WARN split 'train' has no chunk checksums" in result.output, result.output
    alter_tokens(data / "tokens.zarr", "dev", 2)
    load_data(data).store.split("dev")  # unchecked by chunk: read as is
    result = verify_cli(data)
    assert result.exit_code == 1 and "FAIL the data fingerprint does not match" in result.output, result.output
    (data / "tokenizer.json").write_text((data / "tokenizer.json").read_text().replace("<pad>", "<pad2>"))
    result = verify_cli(data)
    assert result.exit_code == 1 and "tokenizer.json does not match" in result.output


def test_alpha_1_refuses_a_cache_block_whose_tokens_were_altered(tmp_path, tiny_data, tiny_cache, copy_of):
    """The baseline (alpha = 1) and --online-teacher read a cache's tokens only; the block checksum
    covers them too, so a block whose tokens changed is refused (or skipped with --skip-bad-blocks)."""
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    cache = copy_of(tiny_cache)
    alter_tokens(cache, "tokens", 8 + 2)  # block 1 (8 rows a block)
    with pytest.raises(CacheCorruptError, match="block 1: checksum mismatch"):
        open_cache(cache).read_block(1, targets=False)
    open_cache(cache).read_block(0, targets=False)
    result = CliRunner().invoke(app, ["train-student", "--cache", str(cache), "--data", str(tiny_data), "--out",
                                      str(tmp_path / "s"), "--preset", "llama-tiny", "--alpha", "1", "--max-steps", "10",
                                      "--batch-size", "8", "--shuffle-buffer", "8", "--device", "cpu"])
    assert result.exit_code == 2 and "block 1: checksum mismatch" in result.output, result.output
    report = train_student(StudentConfig(cache=cache, data=tiny_data, out=tmp_path / "s2", preset="llama-tiny", alpha=1.0,
                                         shuffle_buffer=8, skip_bad_blocks=True, train=tiny_train(4)))
    assert report.skipped_blocks == [1]


def test_verify_a_data_dir_in_a_bucket_names_the_flipped_chunk(s3, tiny_data):
    from typer.testing import CliRunner

    import s3fs
    from logitcache.data.prepared import load_data
    from logitcache_cli.app import app

    url = f"{s3}/data"
    runner = CliRunner()
    assert runner.invoke(app, ["copy", str(tiny_data), url]).exit_code == 0
    assert verify_cli(url).exit_code == 0
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    key = f"{url}/tokens.zarr/dev/c/0/0"
    blob = bytearray(fs.cat(key))
    blob[len(blob) // 2] ^= 0x10
    fs.pipe(key, bytes(blob))
    result = runner.invoke(app, ["verify", url, "--json", "-"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert not payload["ok"] and payload["kind"] == "data" and len(payload["problems"]) == 1
    assert payload["problems"][0].startswith("split 'dev' chunk 0 (rows 0-")
    with pytest.raises(LogitcacheError, match="split 'dev' chunk 0"):
        load_data(url).validation_rows("dev")
