"""Caches and data in object storage, against a real S3 server (moto's, started by the `s3` fixture).

Parity first: a cache dumped to S3 decodes to the same arrays as the same dump on disk, and copies
both ways are object-for-object identical. Then the protocol's promises (a half-created store is no
cache, a second writer is refused, resume finishes a claim), retries through a proxy that answers
503, and one-line errors for a missing bucket.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import dump_config
from logitcache.dump import dump
from logitcache.store import open_cache, verify_cache
from logitcache.store.cache import CREATING, block_chunk_key, root_attrs
from logitcache.store.backends import as_location
from logitcache_cli.app import app

runner = CliRunner()


@pytest.fixture(params=["fsspec", "obstore"])
def backend(request, monkeypatch) -> str:
    """Both s3:// transports: s3fs through zarr's FsspecStore (the default) and obstore's ObjectStore."""
    monkeypatch.setenv("LOGITCACHE_STORAGE_BACKEND", request.param)
    return request.param


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def dump_args(data, teachers, out):
    return ["dump", "--data", data, "--teacher", teachers[0], "--teacher", teachers[1], "--out", out, "--top-k", 8,
            "--temperature", 2.0, "--block-rows", 8, "--batch-size", 4, "--max-chunks", 40, "--device", "cpu"]


def decoded(where) -> list[np.ndarray]:
    reader = open_cache(where)
    return list(reader.read(0, len(reader)).arrays().values())


def objects(where) -> dict[str, bytes]:
    location = as_location(where)
    return {key: location.read_bytes(key) for key in location.sizes()}


def test_url_is_not_a_local_folder(tmp_path, monkeypatch):
    """`dump --out s3://b/c.zarr` names a bucket, never a local folder named `s3:`: a URL stays a URL."""
    location = as_location("s3://bucket/prefix/cache.zarr")
    assert location.is_remote and location.url == "s3://bucket/prefix/cache.zarr" and location.bucket == "bucket"
    assert as_location("file://" + str(tmp_path / "c.zarr")) == as_location(tmp_path / "c.zarr")
    with pytest.raises(Exception, match="unsupported storage URL scheme"):
        as_location("ftp://host/c.zarr")
    monkeypatch.chdir(tmp_path)
    result = invoke("verify", "s3://")
    assert result.exit_code == 2 and "needs a bucket" in result.output
    assert not (tmp_path / "s3:").exists()


def test_dump_to_s3_equals_the_same_dump_on_disk(s3, backend, tiny_data, tiny_teachers, tiny_cache, tmp_path):
    url = f"{s3}/runs/cache.zarr"
    result = invoke(*dump_args(tiny_data, tiny_teachers, url))
    assert result.exit_code == 0, result.output
    assert not any(tmp_path.iterdir()) and not os.path.exists("s3:")
    for a, b in zip(decoded(url), decoded(tiny_cache)):
        assert np.array_equal(a, b)
    # the stored chunks too, object for object (same codec, same bytes)
    remote, local = objects(url), objects(tiny_cache)
    chunks = sorted(k for k in local if "/c/" in k)
    assert chunks and chunks == sorted(k for k in remote if "/c/" in k)
    assert all(remote[k] == local[k] for k in chunks)

    inspected = invoke("inspect", url, "--json", "-")
    assert inspected.exit_code == 0, inspected.output
    summary = json.loads(inspected.stdout)
    assert summary["path"] == url and summary["blocks_done"] == summary["n_blocks"] == 5
    assert summary["bytes_on_disk"] == sum(len(v) for k, v in remote.items() if k.split("/")[0] in summary["sizes"])
    assert invoke("verify", url).exit_code == 0


def test_verify_finds_a_flipped_byte_in_one_object(s3, backend, tiny_cache):
    url = f"{s3}/cache.zarr"
    assert invoke("copy", tiny_cache, url).exit_code == 0
    location = as_location(url)
    key = block_chunk_key("topk_probs", 2)
    data = bytearray(location.read_bytes(key))
    data[len(data) // 2] ^= 0x10
    location.write_bytes(key, bytes(data))
    result = invoke("verify", url, "--json", "-")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["bad_blocks"] == 1 and report["problems"][0].startswith("block 2:")


def test_copy_both_ways_is_exact_resumable_and_refuses_another_cache(s3, backend, tiny_cache, tmp_path, tiny_data,
                                                                     tiny_teachers):
    url = f"{s3}/copy/cache.zarr"
    assert invoke("copy", tiny_cache, url).exit_code == 0
    back = tmp_path / "back.zarr"
    assert invoke("copy", url, back).exit_code == 0
    local, remote, returned = objects(tiny_cache), objects(url), objects(back)
    assert local == remote == returned  # every object, metadata included, byte for byte
    # interrupted copy: the destination lost two blocks' markers (as if killed before them); copy resumes
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # an independent client, whatever the backend
    for block in (1, 3):
        fs.rm(f"{url}/{block_chunk_key('done', block)}")
    result = invoke("copy", tiny_cache, url, "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["blocks_copied"], report["blocks_skipped"]) == (2, 3)
    assert objects(url) == local
    # a different cache at the destination is refused and left untouched
    other = tmp_path / "other.zarr"
    dump(dump_config(tiny_data, tiny_teachers, other, top_k=4))
    before = objects(url)
    result = invoke("copy", other, url)
    assert result.exit_code == 2 and "different cache" in result.output
    assert objects(url) == before


TIMINGS = ("elapsed_s", "tokens_per_s", "seconds")


def test_train_student_and_eval_from_s3_equal_local(s3, backend, tiny_cache, tiny_data, tmp_path):
    """The student trained from the bucket (cache and data) is the one trained from disk."""
    cache_url, data_url = f"{s3}/cache.zarr", f"{s3}/data"
    assert invoke("copy", tiny_cache, cache_url).exit_code == 0
    result = invoke("copy", tiny_data, data_url)  # a prepared data dir: file by file
    assert result.exit_code == 0, result.output
    assert objects(data_url) == objects(tiny_data)
    common = ["--preset", "llama-tiny", "--batch-size", 8, "--max-steps", 6, "--val-chunks", 16, "--device", "cpu",
              "--warmup-steps", 2, "--lr", 3e-3]
    runs = {}
    for name, cache, data in (("remote", cache_url, data_url), ("local", tiny_cache, tiny_data)):
        out = tmp_path / name
        result = invoke("train-student", "--cache", cache, "--data", data, "--out", out, *common)
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[name] = [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]
    assert len(runs["local"]) >= 6 and runs["remote"] == runs["local"]  # losses, val CE: equal to the last bit
    result = invoke("eval", tmp_path / "remote", "--data", data_url, "--max-chunks", 8, "--device", "cpu", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"][0]["ce"] > 0


def test_half_created_store_is_no_cache_and_resume_finishes_it(s3, backend, tiny_data, tiny_teachers, tiny_cache):
    """Killed right after the claim: readers refuse it, a dump without --resume refuses it, --resume finishes."""
    url = f"{s3}/half.zarr"
    # the claim as dump writes it: the same config's attributes with kind "cache-creating", nothing else
    root = json.loads(as_location(tiny_cache).read_bytes("zarr.json"))
    root["attributes"]["logitcache"]["kind"] = CREATING
    assert as_location(url).create_exclusive("zarr.json", json.dumps(root).encode())
    result = invoke("verify", url)
    assert result.exit_code == 2 and "half-created" in result.output, result.output
    result = invoke(*dump_args(tiny_data, tiny_teachers, url))
    assert result.exit_code == 2 and "half-created" in result.output
    result = invoke(*dump_args(tiny_data, tiny_teachers, url), "--resume")
    assert result.exit_code == 0, result.output
    assert root_attrs(url)["kind"] == "cache"
    for a, b in zip(decoded(url), decoded(tiny_cache)):
        assert np.array_equal(a, b)


def test_second_writer_is_refused_and_the_first_cache_kept(s3, backend, tiny_data, tiny_teachers):
    url = f"{s3}/c.zarr"
    assert invoke(*dump_args(tiny_data, tiny_teachers, url)).exit_code == 0
    before = objects(url)
    result = invoke(*dump_args(tiny_data, tiny_teachers, url)[:-2], "--device", "cpu", "--temperature", 1.0)
    assert result.exit_code == 2 and "already exists" in result.output
    result = invoke(*dump_args(tiny_data, tiny_teachers, url), "--temperature", 1.0, "--resume")
    assert result.exit_code == 2 and "different config" in result.output
    assert objects(url) == before
    # the claim itself is atomic: a conditional PUT (If-None-Match) that the server refuses the second time
    assert not as_location(url).create_exclusive("zarr.json", b"{}")
    assert objects(url) == before


def test_missing_bucket_and_bad_scheme_are_one_line_errors(s3, backend, tiny_data, tiny_teachers):
    for args in (["verify", "s3://no-such-bucket-here/c.zarr"], ["inspect", "s3://no-such-bucket-here/c.zarr"],
                 dump_args(tiny_data, tiny_teachers, "s3://no-such-bucket-here/c.zarr"),
                 ["copy", f"{s3}/nothing.zarr", "s3://no-such-bucket-here/c.zarr"]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    assert "bucket 'no-such-bucket-here' does not exist" in invoke("verify", "s3://no-such-bucket-here/c.zarr").output
    assert "no cache at" in invoke("verify", f"{s3}/nothing.zarr").output


def test_transient_503s_are_retried(s3, backend, s3_endpoint, tiny_cache, monkeypatch):
    """Every 10th request answered 503 SlowDown by a proxy in front of the server: copy and verify still
    succeed, and the copy is exact."""
    from logitcache.store.backends import set_default_options
    from logitcache.store.location import StorageOptions
    from s3_server import proxy_stats, serve

    url = f"{s3}/flaky.zarr"
    with serve("proxy", upstream=s3_endpoint, fail_every=10) as proxy:
        try:
            result = invoke("copy", tiny_cache, url, "--storage-option", f"endpoint_url={proxy}")
            assert result.exit_code == 0, result.output
            result = invoke("verify", url, "--storage-option", f"endpoint_url={proxy}")
            assert result.exit_code == 0, result.output
            assert proxy_stats(proxy)["failed"] >= 3  # the faults really happened
        finally:
            set_default_options(StorageOptions())  # the CLI set them for this process
    assert objects(url) == objects(tiny_cache)


def test_torchrun_two_ranks_dump_to_s3(s3, tiny_data, tiny_teachers, tiny_cache):
    url = f"{s3}/ranks.zarr"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "logitcache_cli", *map(str, dump_args(tiny_data, tiny_teachers, url))]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert verify_cache(url) == []
    for a, b in zip(decoded(url), decoded(tiny_cache)):
        assert np.array_equal(a, b)


def test_storage_options_parse():
    from logitcache.store.location import parse_storage_options

    assert parse_storage_options(["endpoint_url=http://h:9000", "anon=true", "client_kwargs.region_name=eu-west-1",
                                  "max_concurrency=8"]) == {
        "endpoint_url": "http://h:9000", "anon": True, "client_kwargs": {"region_name": "eu-west-1"},
        "max_concurrency": 8}
    with pytest.raises(Exception, match="key=value"):
        parse_storage_options(["novalue"])
    from logitcache.store.location import StorageOptions

    assert StorageOptions.parse(["backend=obstore", "anon=true"]) == StorageOptions("obstore", {"anon": True})


def test_run_with_the_cache_in_a_bucket(s3, tmp_path, tiny_raw):
    """`run --cache s3://...`: the dump goes to the bucket, the students stream it, the report names it,
    and a rerun finds the stage complete (its stamp stays in WORK) without touching the bucket."""
    from test_evaluate import blimp_dir
    from test_run import TINY

    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(raw=tiny_raw, blimp=blimp_dir(tmp_path)))
    url, work = f"{s3}/run/cache.zarr", tmp_path / "work"
    args = ["run", "--config", config, "--out", work, "--cache", url, "--set", "student.seeds=[0]"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert not (work / "cache.zarr").exists() and verify_cache(url) == []
    report = json.loads((work / "report.json").read_text())
    assert report["cache"]["path"] == url and report["cache"]["bytes_on_disk"] == sum(
        size for key, size in as_location(url).sizes().items() if key != "zarr.json")
    before = objects(url)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert objects(url) == before and json.loads((work / "report.json").read_text())["students"] == report["students"]


def test_copy_of_a_data_dir_refuses_another_data_dir(s3, tiny_data, tmp_path):
    url = f"{s3}/data"
    # an interrupted copy: the tokenizer landed, the token store's root not yet -> no token store, completed
    as_location(url).write_bytes("tokenizer.json", (tiny_data / "tokenizer.json").read_bytes())
    with pytest.raises(Exception, match="not a token store"):
        from logitcache.data.prepared import load_data

        load_data(url)
    assert invoke("copy", tiny_data, url).exit_code == 0
    assert objects(url) == objects(tiny_data)
    again = invoke("copy", tiny_data, url)  # the same data again: fine (idempotent)
    assert again.exit_code == 0, again.output
    # a folder holding something else is refused and left as it is
    foreign = f"{s3}/foreign"
    as_location(foreign).write_bytes("notes.txt", b"mine")
    result = invoke("copy", tiny_data, foreign)
    assert result.exit_code == 2 and "not a partial copy" in result.output
    assert objects(foreign) == {"notes.txt": b"mine"}
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    root = json.loads((other / "tokens.zarr" / "zarr.json").read_text())
    root["attributes"]["logitcache"]["fingerprint"] = "0" * 64
    (other / "tokens.zarr" / "zarr.json").write_text(json.dumps(root))
    before = objects(url)
    result = invoke("copy", other, url)
    assert result.exit_code == 2 and "different prepared data dir" in result.output
    assert objects(url) == before


def test_unreachable_endpoint_and_bad_options_are_one_line(s3, tmp_path, monkeypatch):
    import s3fs

    from s3_server import free_port

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # s3fs's own retry loop: 5 with backoff by default
    dead = f"http://127.0.0.1:{free_port()}"
    result = invoke("verify", f"{s3}/c.zarr", "--storage-option", "no_such_s3fs_option=1")
    assert result.exit_code == 2 and "no_such_s3fs_option" in result.output, result.output
    result = invoke("verify", f"{s3}/c.zarr", "--storage-option", f"endpoint_url={dead}",
                    "--storage-option", "config_kwargs.retries.max_attempts=2")
    from logitcache.store.backends import set_default_options
    from logitcache.store.location import StorageOptions

    set_default_options(StorageOptions())
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unreachable" in lines[0], result.output


@pytest.fixture
def through_proxy():
    """`through_proxy(upstream, **proxy options)`: a proxy in front of the server that this process's s3://
    requests go through (endpoint_url) for the length of the test; returns the CLI's options that do the same."""
    from logitcache.store.backends import set_default_options
    from logitcache.store.location import StorageOptions
    from s3_server import serve

    with contextlib.ExitStack() as stack:
        def start(upstream, **options) -> str:
            proxy = stack.enter_context(serve("proxy", upstream=upstream, **options))
            set_default_options(StorageOptions(settings={"endpoint_url": proxy}))
            return ["--storage-option", f"endpoint_url={proxy}"]

        try:
            yield start
        finally:
            set_default_options(StorageOptions())


@pytest.mark.parametrize("body", ["aws", "plain"])
def test_a_412_on_the_claim_means_taken_whatever_the_body(s3, backend, s3_endpoint, through_proxy, body, tiny_data,
                                                         tiny_teachers):
    """The loser of two racing dumps: nothing at the prefix when it looks, then its conditional PUT of the
    root answered 412 (AWS's body names the condition, other servers' do not): one line, exit 2, nothing
    written."""
    options = through_proxy(s3_endpoint, refuse_create=body)
    url = f"{s3}/raced.zarr"
    assert not as_location(url).create_exclusive("zarr.json", b"{}")
    result = invoke(*dump_args(tiny_data, tiny_teachers, url), *options)
    assert_one_line_error(result, "already exists")
    assert objects(url) == {}


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_access_errors_are_one_line(s3, backend, s3_endpoint, through_proxy, code, tiny_data, tiny_teachers,
                                    tiny_cache):
    """Every request answered 403 with the code AWS sends: verify, inspect, dump and copy each say so in one line."""
    url = f"{s3}/denied.zarr"
    options = through_proxy(s3_endpoint, deny=code)
    for args in (["verify", url], ["inspect", url], dump_args(tiny_data, tiny_teachers, url), ["copy", tiny_cache, url]):
        assert_one_line_error(invoke(*args, *options), "access denied")


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in result.output, result.output


def _put_raw(endpoint: str, url: str, key: str, data: bytes) -> None:
    """An object put with boto3 as anyone who can write to the bucket could, its name unchecked."""
    import boto3

    from s3_server import CREDENTIALS

    boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                 **{k.lower(): v for k, v in CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"}
                 ).put_object(Bucket=url.removeprefix("s3://").split("/")[0], Key=key, Body=data)


def test_copy_of_a_data_dir_writes_nothing_outside_its_destination(s3, backend, s3_endpoint, tiny_data, tmp_path):
    """An object named `data/../../outside/PWNED.txt` beside a data dir in the bucket: the copy is refused in
    one line, exit 2, nothing written; without it, a stray object is left out and only the data dir's own
    files land."""
    url = f"{s3}/data"
    assert invoke("copy", tiny_data, url).exit_code == 0
    _put_raw(s3_endpoint, s3, "data/notes.txt", b"not data")
    dest = tmp_path / "a" / "b" / "local"
    result = invoke("copy", url, dest)
    assert result.exit_code == 0, result.output
    assert objects(dest) == objects(tiny_data)  # notes.txt left out
    _put_raw(s3_endpoint, s3, "data/../../outside/PWNED.txt", b"pwned")
    dest = tmp_path / "a" / "b" / "again"
    result = invoke("copy", url, dest)
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "../../outside/PWNED.txt" in line and "refused" in line
    assert not dest.exists() and sorted(p.name for p in (tmp_path / "a").rglob("*")) == sorted(
        p.name for p in (tmp_path / "a").rglob("*") if "PWNED" not in p.name)
    assert not list(tmp_path.rglob("PWNED.txt")) and not list(tmp_path.rglob("outside"))


def test_copy_of_a_cache_writes_only_the_cache(s3, backend, s3_endpoint, tiny_cache, tmp_path):
    """A cache's copy lists nothing from its source: objects beside it (a hostile name too) never land."""
    url = f"{s3}/c.zarr"
    assert invoke("copy", tiny_cache, url).exit_code == 0
    _put_raw(s3_endpoint, s3, "c.zarr/../../outside/PWNED.txt", b"pwned")
    _put_raw(s3_endpoint, s3, "c.zarr/notes.txt", b"not cache")
    dest = tmp_path / "a" / "b" / "c.zarr"
    assert invoke("copy", url, dest).exit_code == 0
    assert objects(dest) == objects(tiny_cache) and not list(tmp_path.rglob("PWNED.txt"))
