import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_train
from logitcache.errors import LogitcacheError
from logitcache.teachers.models import PRESETS, count_params
from logitcache.train_teacher import TeacherConfig, train_teacher
from logitcache.training.loop import read_metrics


def test_paper_presets_match_the_paper():
    # GPT-2 705M, LLaMA 360M, LLaMA 58M: within 2%, counted on the meta device (no allocation)
    for name, expected in (("gpt2-705m", 705e6), ("llama-360m", 360e6), ("llama-58m", 58e6)):
        assert abs(count_params(PRESETS[name], 16000) - expected) / expected < 0.02, name


def test_loss_falls_and_model_loads_in_plain_transformers(tmp_path, tiny_data):
    out = tmp_path / "t"
    report = train_teacher(TeacherConfig(data=tiny_data, out=out, arch="llama", preset="llama-tiny", train=tiny_train(30)))
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    vals = [r["val_ce"] for r in read_metrics(out) if "val_ce" in r]
    assert report.best_val_ce == min(vals)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    best = AutoModelForCausalLM.from_pretrained(str(out / "best"))
    ids = torch.randint(3, 300, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, best(ids).logits)
    assert json.loads((out / "config.json").read_text())["bos_token_id"] == 1
    assert (out / "tokenizer.json").is_file() and (out / "logitcache_config.json").is_file()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_gives_the_same_weights_and_losses(tmp_path, tiny_data, precision):
    """Resumed equals single-shot; under fp16 the checkpoint carries the loss scaler's state (its scale and
    growth tracker), which the resumed run must restore to take the same steps."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train = tiny_train(12, checkpoint_every=5, precision=precision)
    train_teacher(TeacherConfig(data=tiny_data, out=full, arch="gpt2", preset="gpt2-tiny", train=train))
    # the interrupted run: same config, stopped after the step-5 checkpoint (state as a kill would leave it)
    import logitcache.training.loop as T

    original = T.save_checkpoint
    calls = []

    def save_then_die(out, state):
        original(out, state)
        calls.append(state["step"])
        if state["step"] == 5:
            raise KeyboardInterrupt

    T.save_checkpoint = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train_teacher(TeacherConfig(data=tiny_data, out=cut, arch="gpt2", preset="gpt2-tiny", train=train))
    finally:
        T.save_checkpoint = original
    assert calls == [5]
    from logitcache.training.checkpoint import load_checkpoint

    scaler = load_checkpoint(cut)["scaler"]
    assert (scaler == {}) == (precision == "fp32")  # fp16: an enabled scaler, its scale saved
    if precision == "fp16":
        assert scaler["scale"] > 1 and "_growth_tracker" in scaler
    train_teacher(TeacherConfig(data=tiny_data, out=cut, arch="gpt2", preset="gpt2-tiny", train=train), resume=True)
    a, b = AutoModelForCausalLM.from_pretrained(str(full)), AutoModelForCausalLM.from_pretrained(str(cut))
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(pa, pb, atol=1e-6), name
    la = [r["loss"] for r in read_metrics(full) if "loss" in r]
    lb = [r["loss"] for r in read_metrics(cut) if "loss" in r]
    assert len(la) == len(lb) == 12 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-5


def test_resume_with_another_config_is_refused(tmp_path, tiny_data):
    out = tmp_path / "t"
    train_teacher(TeacherConfig(data=tiny_data, out=out, arch="llama", preset="llama-tiny", train=tiny_train(3)))
    with pytest.raises(LogitcacheError, match="different config"):
        train_teacher(TeacherConfig(data=tiny_data, out=out, arch="llama", preset="llama-tiny",
                                    train=tiny_train(3, lr=1e-2)), resume=True)


def test_vocabulary_mismatch_is_refused(tmp_path, tiny_data):
    with pytest.raises(LogitcacheError, match="vocabulary"):
        train_teacher(TeacherConfig(data=tiny_data, out=tmp_path / "t", arch="llama", preset="llama-tiny",
                                    vocab_size=16000, train=tiny_train(2)))


def test_preset_arch_mismatch_is_refused(tiny_data, tmp_path):
    with pytest.raises(LogitcacheError, match="is a llama model"):
        TeacherConfig(data=tiny_data, out=tmp_path, arch="gpt2", preset="llama-tiny")


def run_cli(args, nproc=1, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m"] \
        if nproc > 1 else [sys.executable, "-m"]
    return subprocess.run(prefix + ["logitcache_cli", *args], capture_output=True, text=True, env=env, timeout=300)


def test_ddp_two_processes_follow_the_single_process_curve(tmp_path, tiny_data):
    common = ["train-teacher", "--data", str(tiny_data), "--arch", "llama", "--preset", "llama-tiny", "--batch-size", "8",
              "--max-steps", "6", "--warmup-steps", "2", "--lr", "3e-3", "--val-chunks", "16", "--device", "cpu"]
    one = run_cli(common + ["--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_cli(common + ["--out", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a = [r for r in read_metrics(tmp_path / "one") if "loss" in r]
    b = [r for r in read_metrics(tmp_path / "two") if "loss" in r]
    assert len(a) == len(b) == 6
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) < 1e-4
    va = [r["val_ce"] for r in read_metrics(tmp_path / "one") if "val_ce" in r]
    vb = [r["val_ce"] for r in read_metrics(tmp_path / "two") if "val_ce" in r]
    assert abs(va[-1] - vb[-1]) < 1e-4


def test_checkpoint_with_python_objects_is_refused_without_running_them(tmp_path, tiny_data):
    """A checkpoint from elsewhere must not execute code on --resume: only tensors and plain containers load."""
    from logitcache.training.checkpoint import save_checkpoint

    out = tmp_path / "t"
    config = TeacherConfig(data=tiny_data, out=out, arch="llama", preset="llama-tiny", train=tiny_train(2))
    train_teacher(config)
    marker = tmp_path / "pwned"
    save_checkpoint(out, {"step": 1, "payload": Exploit(str(marker))})  # a valid trailer: only the content is hostile
    with pytest.raises(LogitcacheError, match="refused"):
        train_teacher(config, resume=True)
    assert not marker.exists()


class Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_saved_config_records_world_size_and_loads_back(tmp_path, tiny_data):
    from logitcache.training.checkpoint import load_checkpoint

    out = tmp_path / "t"
    train_teacher(TeacherConfig(data=tiny_data, out=out, arch="llama", preset="llama-tiny", train=tiny_train(2)))
    saved = json.loads((out / "logitcache_config.json").read_text())
    assert saved["world_size"] == 1 and saved["train"]["max_steps"] == 2
    state = load_checkpoint(out)  # weights_only=True: everything the trainer saves is plain
    assert state["step"] == 2 and state["config"] == saved


def test_tensorboard_events_hold_the_logged_metrics(tmp_path, tiny_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "t"
    train_teacher(TeacherConfig(data=tiny_data, out=out, arch="llama", preset="llama-tiny",
                                train=tiny_train(4, tensorboard=True)))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [r for r in read_metrics(out) if "loss" in r]
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [r["step"] for r in logged]
    assert all(abs(e.value - r["loss"]) < 1e-5 for e, r in zip(loss, logged))
    assert [e.step for e in events.Scalars("val_ce")] == [r["step"] for r in read_metrics(out) if "val_ce" in r]


def test_tune_heap_keeps_big_buffers_on_the_heap():
    """After tune_heap, a 256 MB malloc comes from the heap, not a fresh mmap (glibc's mallinfo2 counts
    mmapped bytes in hblkhd). The thresholds once overflowed mallopt's C int and became 0, which mmaps
    every such buffer: this fails then, and it fails untuned."""
    script = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "tuned":
    from logitcache.runtime.process import tune_heap
    tune_heap()
before = libc.mallinfo2().hblkhd
buffer = libc.malloc(256 << 20)
print(libc.mallinfo2().hblkhd - before)
"""
    mmapped = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                        check=True).stdout) for mode in ("tuned", "default")}
    assert mmapped["default"] >= 256 << 20  # the check itself sees an mmap when there is one
    assert mmapped["tuned"] == 0


@pytest.mark.parametrize("user_value", [None, "12345"])
def test_tune_process_sets_the_openmp_spin_and_keeps_the_users(user_value):
    """libgomp reads GOMP_SPINCOUNT when torch loads it: tune_process sets ours unless the user set one."""
    from logitcache.runtime.process import GOMP_SPINCOUNT

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if user_value:
        env["GOMP_SPINCOUNT"] = user_value
    script = "from logitcache.runtime.process import tune_process; tune_process(); import os; print(os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == (user_value or GOMP_SPINCOUNT)
