"""`dump --engine ray` against a real local Ray cluster on 127.0.0.1 (no mocks of Ray).

Every test compares the Ray cache with the single-process dump of the same config (`tiny_cache`),
object for object: the chunks, the markers and the array metadata byte for byte, the root's attributes
but for the creation time and the engine settings. Faults are real: a worker process SIGKILLed while it
holds a block, the driver SIGKILLed mid-run. Workers append their block events to $LOGITCACHE_RAY_EVENTS,
which shows what was killed and what was retried.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import dump_config
from logitcache.dump import dump
from logitcache.config import DumpConfig, RayConfig
from logitcache.store import verify_cache, CacheStore
from logitcache.store.backends import as_location
from logitcache.store.writers import writers_of
from logitcache_cli.app import app

ray = pytest.importorskip("ray")

ENGINE_SETTINGS = {"engine", "ray"}
WRITE_PAUSE_S = "0.4"  # every block waits this long between its data and its `done`: a wide mid-block window


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster of 2 CPUs and a 200 MB object store, owned by this test process."""
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def objects(where) -> dict[str, bytes]:
    location = as_location(where)
    return {key: location.read_bytes(key) for key in location.sizes()}


def assert_same_cache(ray_cache, reference) -> None:
    """Every stored object equal; the root attributes equal but for `created` and the engine settings."""
    ours, theirs = objects(ray_cache), objects(reference)
    assert sorted(ours) == sorted(theirs) and len(ours) > 20
    assert [key for key in ours if key != "zarr.json" and ours[key] != theirs[key]] == []
    roots = [json.loads(o["zarr.json"])["attributes"]["logitcache"] for o in (ours, theirs)]
    for root in roots:
        root.pop("created")
        root["config"] = {k: v for k, v in root["config"].items() if k not in ENGINE_SETTINGS | {"out"}}
    assert roots[0] == roots[1]


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Killer(threading.Thread):
    """Once a block is committed, SIGKILLs a worker process that holds a block it has not committed."""

    def __init__(self, events: Path, timeout_s: float = 240.0):
        super().__init__(daemon=True)
        self.events, self.timeout_s = events, timeout_s
        self.killed: tuple[int, int] | None = None  # (pid, block)

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and self.killed is None:
            events = read_events(self.events)
            committed = {(e["pid"], e["block"]) for e in events if e["event"] == "commit"}
            in_flight = [(e["pid"], e["block"]) for e in events if e["event"] == "start"
                         and (e["pid"], e["block"]) not in committed]
            if committed and in_flight:
                os.kill(in_flight[0][0], signal.SIGKILL)
                self.killed = in_flight[0]
            time.sleep(0.02)


def check_kill_and_retry(events_path: Path, killed: tuple[int, int] | None) -> None:
    """The killed process never reported the block it held, and another process ran that block's task
    again: it committed the block, or found it done (the kill can land after the store's `done` and
    before the worker's own commit event; the block then counts once, from the store)."""
    assert killed is not None, "no worker was killed"
    pid, block = killed
    events = read_events(events_path)
    assert not any(e["event"] == "commit" and e["pid"] == pid and e["block"] == block for e in events)
    retried = [e for e in events if e["block"] == block and e["event"] in ("commit", "skip")]
    assert retried and all(e["pid"] != pid for e in retried)


def ray_config(tiny_data, tiny_teachers, out, **settings) -> DumpConfig:
    return dump_config(tiny_data, tiny_teachers, out, engine="ray", ray=RayConfig(workers="2"), **settings)


def run_with_a_worker_killed(out, tiny_data, tiny_teachers, tmp_path, monkeypatch):
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("LOGITCACHE_RAY_EVENTS", str(events))  # forwarded to the workers with LOGITCACHE_*
    monkeypatch.setenv("LOGITCACHE_FAULT_WRITE_PAUSE", WRITE_PAUSE_S)
    killer = Killer(events)
    killer.start()
    report = dump(ray_config(tiny_data, tiny_teachers, out))
    killer.join(timeout=1)
    check_kill_and_retry(events, killer.killed)
    assert report.restarts >= 1  # Ray's actor table: the killed actor was restarted
    assert report.blocks_written == 5  # every block once (the killed task's block by whichever worker retried it)
    return report


def test_a_worker_killed_mid_block_is_restarted_and_the_cache_equals_one_process(
        ray_cluster, tiny_data, tiny_teachers, tiny_cache, tmp_path, monkeypatch):
    out = tmp_path / "ray.zarr"
    report = run_with_a_worker_killed(out, tiny_data, tiny_teachers, tmp_path, monkeypatch)
    assert verify_cache(out) == []
    assert_same_cache(out, tiny_cache)
    assert report.writers == writers_of(CacheStore(tiny_cache)) and report.writers[0]["device"] == "cpu"


@pytest.mark.slow
def test_a_worker_killed_with_the_cache_in_s3(ray_cluster, s3, tiny_data, tiny_teachers, tiny_cache, tmp_path,
                                              monkeypatch):
    """The workers write their blocks to the bucket themselves (the AWS_* settings reach them)."""
    url = f"{s3}/ray/cache.zarr"
    run_with_a_worker_killed(url, tiny_data, tiny_teachers, tmp_path, monkeypatch)
    assert not any(tmp_path.glob("*.zarr"))
    assert verify_cache(url) == []
    assert_same_cache(url, tiny_cache)


def test_a_teacher_on_its_own_tokenizer_reports_one_processes_coverage(ray_cluster, tmp_path):
    """A teacher with a Metaspace BPE of its own, on 2 Ray workers: the coverage the driver reports (each
    block's counts, returned with the block) equals the single-process dump's over the same blocks, and
    the cache equals that dump's, teacher_count included."""
    from logitcache.prepare import PrepareConfig, prepare
    from test_cross_tokenizer import odd_corpus, teacher_folder, teacher_metaspace

    data = tmp_path / "data"
    prepare(PrepareConfig(data=odd_corpus(tmp_path / "raw"), out=data, vocab_size=300, seq_len=32))
    teacher = teacher_folder(tmp_path, "llama-metaspace", teacher_metaspace(), "llama", 2)
    settings = dict(combine="mean-probs", max_chunks=40, min_coverage=0.2, temperature=1.0)
    local = dump(dump_config(data, [teacher], tmp_path / "one.zarr", **settings))
    report = dump(dump_config(data, [teacher], tmp_path / "ray.zarr", engine="ray", ray=RayConfig(workers="2"), **settings))
    assert report.blocks_written == report.coverage_blocks == 5
    assert len(report.coverage) == len(local.coverage) == 1 and local.coverage[0]["positions"] < 1
    assert report.coverage[0]["positions"] == local.coverage[0]["positions"]  # counts: exact
    assert report.coverage[0]["mass"] == pytest.approx(local.coverage[0]["mass"], rel=1e-6)  # float sums, reordered
    assert_same_cache(tmp_path / "ray.zarr", tmp_path / "one.zarr")


def test_a_worker_in_another_precision_is_refused(ray_cluster, tiny_data, tiny_teachers, tmp_path):
    """The cache fixes one precision: a worker whose precision differs refuses before its first block,
    and the driver says so in one line."""
    from logitcache.errors import LogitcacheError
    from logitcache.dump.ray_engine import BlockWorker

    out = tmp_path / "c.zarr"
    dump(dump_config(tiny_data, tiny_teachers, out, max_chunks=16))  # fp32 on the CPU
    for block in (1,):  # a resume needs a block to do
        (out / "done" / "c" / str(block)).unlink()
    worker = BlockWorker(dump_config(tiny_data, tiny_teachers, out, max_chunks=16, engine="ray", precision="bf16"), {})
    assert "precision" in worker.refusal
    with pytest.raises(LogitcacheError, match="precision"):
        worker({"block": [1]})
    assert not (out / "done" / "c" / "1").exists()


def test_without_ray_the_engine_is_refused_in_one_line(monkeypatch, tiny_data, tiny_teachers, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    result = CliRunner().invoke(app, ["dump", "--data", str(tiny_data), "--teacher", str(tiny_teachers[0]),
                                      "--out", str(tmp_path / "c.zarr"), "--engine", "ray"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].endswith("--engine ray needs Ray: pip install 'logitcache[ray]'")
    assert "Traceback" not in result.output and not (tmp_path / "c.zarr").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """`ray start --head` in its own process group (killed by group id afterwards): the --ray-address path.
    Token authentication on, as Ray's default for a new cluster, named explicitly so the head, `ray status`
    and the driver all use the token in ~/.ray/auth_token."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--object-store-memory=200000000", "--include-dashboard=false", "--disable-usage-stats",
                             "--node-ip-address=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        probe = subprocess.run([str(ray_bin), "status", f"--address={address}"], capture_output=True)
        if probe.returncode == 0:
            break
        assert head.poll() is None, "ray start --head exited"
        time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # what SIGTERM left of the group (gcs_server, the monitor)
        os.killpg(head.pid, signal.SIGKILL)
    # `ray start` names its cluster the machine's current one; a later ray.init() would try to join it
    current = Path("/tmp/ray/ray_current_cluster")
    if current.exists() and current.read_text().strip().endswith(f":{port}"):
        current.unlink()


@pytest.mark.slow
def test_the_driver_killed_mid_run_then_the_same_command_finishes(ray_head, tiny_data, tiny_teachers, tiny_cache,
                                                                 tmp_path):
    out, events = tmp_path / "ray.zarr", tmp_path / "events.jsonl"
    command = [sys.executable, "-m", "logitcache_cli", "dump", "--data", tiny_data, "--teacher", tiny_teachers[0],
               "--teacher", tiny_teachers[1], "--out", out, "--top-k", 8, "--temperature", 2.0, "--block-rows", 8,
               "--batch-size", 4, "--max-chunks", 40, "--device", "cpu", "--engine", "ray", "--ray-address", ray_head,
               "--workers", "1:2", "--resume"]
    command = [str(c) for c in command]
    env = dict(os.environ, LOGITCACHE_RAY_EVENTS=str(events), LOGITCACHE_FAULT_WRITE_PAUSE=WRITE_PAUSE_S)
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(e["event"] == "commit" for e in read_events(events)):
        assert driver.poll() is None, driver.stdout.read().decode()[-2000:]
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(3)  # the job's workers go with their driver
    done = CacheStore(out).done_mask()
    assert 1 <= done.sum() < done.size
    killed_at = time.time()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    rerun = {e["block"] for e in read_events(events) if e["event"] == "commit" and e["t"] > killed_at}
    assert rerun == {b for b in range(done.size) if not done[b]}  # the rerun did only the blocks not done
    assert verify_cache(out) == []
    assert_same_cache(out, tiny_cache)
