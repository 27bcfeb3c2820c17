"""SIGKILL `dump`, `train-student` and `run` at seeded random points; resume; nothing is lost.

Each kill lands at a random time in the job (seeded), with pauses injected inside block writes and
between a checkpoint's write and its rename, so kills hit those windows too. After every kill:
blocks marked done before it are byte-identical afterwards (never rewritten), and the resumed
result equals the uninterrupted one.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import write_tiny_corpus

pytestmark = pytest.mark.slow
KILL_POINTS = 10


def cli(*args, env=None):
    return [sys.executable, "-m", "logitcache_cli", *[str(a) for a in args]]


def start(args, extra_env):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra_env)
    return subprocess.Popen(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)


def run_to_end(args, extra_env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(extra_env or {}))
    proc = subprocess.run(cli(*args), capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def kill_after(args, delay, extra_env):
    proc = start(args, extra_env)
    try:
        proc.wait(timeout=delay)
        return False  # finished before the kill
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def block_files(cache: Path, block: int) -> dict[str, bytes]:
    from logitcache.store import block_chunk_path

    return {name: block_chunk_path(cache, name, block).read_bytes() for name in ("tokens", "topk_ids", "topk_probs")}


def stored(cache: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(cache), mode="r")
    return {name: group[name][:] for name in ("tokens", "topk_ids", "topk_probs", "done", "checksum")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from logitcache.prepare import PrepareConfig, prepare
    from logitcache.train_teacher import TeacherConfig, train_teacher
    from conftest import tiny_train

    root = tmp_path_factory.mktemp("faults")
    raw = write_tiny_corpus(root / "raw", {"train": 2400, "dev": 80, "test": 80})
    data = root / "data"
    prepare(PrepareConfig(data=raw, out=data, vocab_size=300, seq_len=32))
    teachers = []
    for arch in ("llama", "gpt2"):
        train_teacher(TeacherConfig(data=data, out=root / arch, arch=arch, preset=f"{arch}-tiny", train=tiny_train(10)))
        teachers.append(root / arch)
    return root, data, teachers


def dump_args(data, teachers, out):
    return ["dump", "--data", data, "--teacher", teachers[0], "--teacher", teachers[1], "--out", out, "--top-k", 8,
            "--block-rows", 8, "--batch-size", 4, "--max-chunks", 160, "--device", "cpu"]


def test_dump_survives_sigkill_anywhere(setup):
    root, data, teachers = setup
    reference = root / "reference.zarr"
    durations = []
    for out in (root / "first-run.zarr", reference):  # the first process compiles and warms what the others reuse
        t0 = time.perf_counter()
        run_to_end(dump_args(data, teachers, out))
        durations.append(time.perf_counter() - t0)
    duration = min(durations)  # a warm run: the kill delays below are fractions of it
    a, b = stored(root / "first-run.zarr"), stored(reference)
    assert all(np.array_equal(a[name], b[name]) for name in a)  # two clean runs agree
    rng = random.Random(1234)
    kills = 0
    for point in range(KILL_POINTS):
        out = root / f"killed{point}.zarr"
        env = {"LOGITCACHE_FAULT_WRITE_PAUSE": "0.05"}
        # from late start-up to the last block: the killed runs, with their write pause, last longer than
        # `duration`, so nearly every point lands before the end (a point after it would only rerun the reference)
        delay = rng.uniform(0.3 * duration, 1.0 * duration)
        killed = kill_after(dump_args(data, teachers, out), delay, env)
        # a second kill during the resume itself, then a final resume to the end
        for attempt in range(2):
            if not (out / "zarr.json").exists():
                break
            done = stored(out)["done"].astype(bool)
            before = {b: block_files(out, b) for b in np.flatnonzero(done)}
            if attempt == 0 and killed:
                kill_after(dump_args(data, teachers, out) + ["--resume"], rng.uniform(0.2, 0.8) * duration, env)
            else:
                run_to_end(dump_args(data, teachers, out) + ["--resume"])
            for block, files in before.items():  # complete blocks are never rewritten
                assert block_files(out, block) == files, (point, block)
        if not (out / "zarr.json").exists():  # killed before the store was created: start again
            run_to_end(dump_args(data, teachers, out))
        elif not stored(out)["done"].all():
            run_to_end(dump_args(data, teachers, out) + ["--resume"])
        kills += killed
        a, b = stored(reference), stored(out)
        for name in a:
            assert np.array_equal(a[name], b[name]), (point, name)
    assert kills >= KILL_POINTS // 2  # most seeded points really interrupted the job


def student_args(cache, data, out):
    return ["train-student", "--cache", cache, "--data", data, "--out", out, "--preset", "llama-tiny", "--batch-size", 8,
            "--max-steps", 24, "--warmup-steps", 2, "--lr", "3e-3", "--checkpoint-every", 2, "--val-chunks", 16,
            "--device", "cpu", "--shuffle-buffer", 24]


def test_train_student_survives_sigkill_anywhere(setup):
    from transformers import AutoModelForCausalLM

    root, data, teachers = setup
    cache = root / "student-cache.zarr"
    run_to_end(dump_args(data, teachers, cache))
    reference = root / "student-ref"
    t0 = time.perf_counter()
    run_to_end(student_args(cache, data, reference))
    duration = time.perf_counter() - t0
    ref = AutoModelForCausalLM.from_pretrained(str(reference)).state_dict()
    rng = random.Random(99)
    kills = 0
    for point in range(KILL_POINTS):
        out = root / f"student{point}"
        env = {"LOGITCACHE_FAULT_CHECKPOINT_PAUSE": "0.1"}
        kills += kill_after(student_args(cache, data, out), rng.uniform(0.3, 1.0) * duration, env)
        run_to_end(student_args(cache, data, out) + ["--resume"])
        got = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
        for name in ref:
            assert torch.allclose(ref[name], got[name], atol=1e-6), (point, name)
    assert kills >= KILL_POINTS // 2


RUN_CONFIG = """
[data]
raw_dir = "{raw}"
vocab_size = 300
seq_len = 32
[[teachers]]
name = "llama"
arch = "llama"
preset = "llama-tiny"
[teachers.train]
batch_size = 8
max_steps = 8
warmup_steps = 2
val_chunks = 16
device = "cpu"
[dump]
top_k = 8
block_rows = 8
batch_size = 4
max_chunks = 200
[student]
preset = "llama-tiny"
seeds = [0]
[student.train]
batch_size = 8
max_steps = 4
warmup_steps = 1
val_chunks = 16
device = "cpu"
[eval]
max_chunks = 16
"""


def test_run_killed_during_dump_resumes_without_retraining_teachers(setup, tmp_path):
    root, _, _ = setup
    config = tmp_path / "run.toml"
    config.write_text(RUN_CONFIG.format(raw=root / "raw"))
    reference, work = tmp_path / "ref", tmp_path / "work"
    run_to_end(["run", "--config", config, "--out", reference])
    env = {"LOGITCACHE_FAULT_WRITE_PAUSE": "0.3"}
    proc = start(["run", "--config", config, "--out", work], env)
    deadline = time.monotonic() + 600
    while not (work / "cache.zarr" / "done" / "c" / "2").exists():  # the dump has committed a few blocks
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((work / "dump.stage.json").read_text())["complete"] is False  # the dump's stamp: started
    weights = work / "teachers" / "llama" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    run_to_end(["run", "--config", config, "--out", work])
    assert weights.stat().st_mtime_ns == mtime  # the teacher was not trained again
    a, b = stored(reference / "cache.zarr"), stored(work / "cache.zarr")
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert (work / "report.md").exists()


def remote_stored(url: str) -> dict[str, np.ndarray]:
    from logitcache.store.backends import as_location

    group = zarr.open_group(store=as_location(url).zarr_store(), mode="r")
    return {name: group[name][:] for name in ("tokens", "topk_ids", "topk_probs", "done", "checksum")}


def remote_block_objects(url: str, block: int) -> dict[str, bytes]:
    from logitcache.store.cache import block_chunk_key
    from logitcache.store.backends import as_location

    location = as_location(url)
    return {name: location.read_bytes(block_chunk_key(name, block)) for name in ("tokens", "topk_ids", "topk_probs")}


def test_dump_to_s3_survives_sigkill_anywhere(setup, s3):
    """The same promise in object storage (no rename there): kill -9 at seeded points of a dump to the
    moto server, resume; committed blocks are never rewritten and the result equals an uninterrupted dump."""
    from logitcache.store.cache import root_attrs

    root, data, teachers = setup
    reference = f"{s3}/reference.zarr"
    t0 = time.perf_counter()
    run_to_end(dump_args(data, teachers, reference))
    duration = time.perf_counter() - t0
    rng = random.Random(4321)
    kills = 0
    points = KILL_POINTS // 2
    for point in range(points):
        out = f"{s3}/killed{point}.zarr"
        env = {"LOGITCACHE_FAULT_WRITE_PAUSE": "0.05"}
        killed = kill_after(dump_args(data, teachers, out), rng.uniform(0.3 * duration, 1.0 * duration), env)
        kills += killed
        if root_attrs(out) is None:  # killed before the claim: nothing there, start again
            run_to_end(dump_args(data, teachers, out))
        else:
            done = remote_stored(out)["done"].astype(bool) if root_attrs(out)["kind"] == "cache" else np.zeros(0, bool)
            before = {b: remote_block_objects(out, b) for b in np.flatnonzero(done)}
            run_to_end(dump_args(data, teachers, out) + ["--resume"])
            for block, files in before.items():
                assert remote_block_objects(out, block) == files, (point, block)
        a, b = remote_stored(reference), remote_stored(out)
        for name in a:
            assert np.array_equal(a[name], b[name]), (point, name)
    assert kills >= points // 2
