"""Activation checkpointing and FSDP2 students (training/parallel.py, training/loop.py).

Activation checkpointing must change memory, never the numbers: the same loss and gradients as without it.
FSDP2 runs under a real torchrun (gloo on CPU): two ranks give the losses of one process over the same global
batch, a SIGKILL plus --resume gives the uninterrupted run, and the saved model is a plain transformers folder.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import tiny_train
from logitcache.errors import LogitcacheError
from logitcache.teachers.models import build_model, get_preset
from logitcache.train_student import StudentConfig, train_student
from logitcache.training.checkpoint import load_checkpoint
from logitcache.training.loop import enable_activation_checkpointing, next_token_ce, read_metrics


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = next_token_ce(model(input_ids=ids).logits, ids)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def saved_bytes(model, ids) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one forward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        next_token_ce(model(input_ids=ids).logits, ids)
    return sum(storages.values())


def test_activation_checkpointing_keeps_the_loss_and_gradients(tiny_data):
    """Tiny llama in train mode: the same loss and gradients (fp32) with checkpointing, and fewer bytes kept."""
    torch.manual_seed(0)
    plain = build_model(get_preset("llama-tiny"), 300, seed=0)
    plain.train()
    checkpointed = copy.deepcopy(plain)
    enable_activation_checkpointing(checkpointed)
    assert checkpointed.is_activation_checkpointing
    ids = torch.randint(0, 300, (4, 32))
    loss_a, grads_a = loss_and_grads(plain, ids)
    loss_b, grads_b = loss_and_grads(checkpointed, ids)
    assert torch.allclose(loss_a, loss_b, rtol=1e-6, atol=0)
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=1e-5, atol=1e-7), name
    assert saved_bytes(checkpointed, ids) < 0.7 * saved_bytes(plain, ids)


def test_train_student_with_activation_checkpointing_follows_the_same_losses(tmp_path, tiny_data, tiny_cache):
    config = dict(cache=tiny_cache, data=tiny_data, preset="llama-tiny", alpha=0.5, shuffle_buffer=16)
    train_student(StudentConfig(out=tmp_path / "plain", train=tiny_train(4), **config))
    train_student(StudentConfig(out=tmp_path / "ac", train=tiny_train(4, activation_checkpointing=True), **config))
    plain = [r["loss"] for r in read_metrics(tmp_path / "plain") if "loss" in r]
    ac = [r["loss"] for r in read_metrics(tmp_path / "ac") if "loss" in r]
    assert len(plain) == 4 and ac == pytest.approx(plain, rel=1e-5)


def test_fsdp_without_torchrun_is_refused(tmp_path, tiny_data, tiny_cache):
    with pytest.raises(LogitcacheError, match="--fsdp shards the model over ranks"):
        train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=tmp_path / "s", preset="llama-tiny",
                                    train=tiny_train(2, fsdp=True)))
    assert not (tmp_path / "s" / "checkpoint").exists()


def test_fsdp_refuses_fp16():
    from logitcache.training.parallel import mixed_precision

    assert mixed_precision("fp32") is None and mixed_precision("bf16").param_dtype == torch.bfloat16
    with pytest.raises(LogitcacheError, match="use bf16 or fp32"):
        mixed_precision("fp16")


# ---------------------------------------------------------------- FSDP2 under torchrun (gloo, CPU)

FSDP_STEPS = 10


def student_args(cache, data, out):
    return ["train-student", "--cache", cache, "--data", data, "--out", out, "--preset", "llama-tiny", "--alpha", 0.5,
            "--max-steps", FSDP_STEPS, "--batch-size", 8, "--lr", 3e-3, "--warmup-steps", 2, "--val-chunks", 16,
            "--shuffle-buffer", 16, "--checkpoint-every", 2, "--device", "cpu"]


def torchrun_command(args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "logitcache_cli", *map(str, args)]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_fsdp(args, timeout=240):
    proc = subprocess.run(torchrun_command(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


def weights(out) -> dict[str, torch.Tensor]:
    """The saved model as plain transformers loads it (no logitcache code involved)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out)).state_dict()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tiny_data, tiny_cache):
    out = tmp_path_factory.mktemp("fsdp") / "student"
    run_fsdp(student_args(tiny_cache, tiny_data, out) + ["--fsdp"])
    return out


@pytest.mark.slow
def test_fsdp_two_ranks_follow_one_process(fsdp_run, tmp_path, tiny_data, tiny_cache):
    """Two FSDP2 ranks, each with half of every global batch of 8, against one process on the whole batch.
    Tolerance: both compute the same fp32 sums in another order (each rank's mean over its 4 rows, then the
    reduce-scatter's average of the two, against one mean over 8), so single steps differ by a few fp32
    roundings (~1e-7 relative; measured here: 1e-7 on the losses). Adam's update divides by the root of the
    squared gradients, which can amplify such differences in tiny gradients over 10 steps: 1e-5 relative on
    the losses and 1e-4 absolute on the weights (measured 1.1e-5) leave room for that and still fail on any
    real divergence (a wrong shard, a missed reduction or a doubled gradient moves the loss by 1e-2 or more)."""
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "logitcache_cli", *map(str, student_args(tiny_cache, tiny_data, single))],
                          capture_output=True, text=True, timeout=240, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(losses(single)) == FSDP_STEPS
    assert losses(fsdp_run) == pytest.approx(losses(single), rel=1e-5)
    assert losses(fsdp_run)[-1] < losses(fsdp_run)[0] - 0.3  # it trained
    a, b = weights(single), weights(fsdp_run)
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-4), name
    saved = json.loads((fsdp_run / "logitcache_config.json").read_text())
    assert saved["world_size"] == 2 and saved["train"]["fsdp"] is True


@pytest.mark.slow
def test_fsdp_sigkill_and_resume_equal_the_uninterrupted_run(fsdp_run, tmp_path, tiny_data, tiny_cache):
    """SIGKILL both ranks and the launcher mid-run (after the checkpoint at step 4, before the one at 6), then
    --resume under FSDP: the same losses and weights as the uninterrupted FSDP run."""
    out = tmp_path / "killed"
    args = student_args(tiny_cache, tiny_data, out) + ["--fsdp"]
    proc = subprocess.Popen(torchrun_command(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
                            start_new_session=True)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r.get("step", 0) >= 5 for r in read_metrics(out)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "COMPLETE").exists()
    assert load_checkpoint(out)["step"] in (4, 6)  # the resume continues from a checkpoint, not from scratch
    run_fsdp(args + ["--resume"])
    assert losses(out) == pytest.approx(losses(fsdp_run), rel=1e-6)
    a, b = weights(fsdp_run), weights(out)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), name


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_under_fsdp(fsdp_run, tmp_path, tiny_data, tiny_cache, monkeypatch):
    """Checkpoints hold full state dicts whatever the wrapping: a one-process run stopped after its checkpoint
    at step 6 resumes on two FSDP ranks and ends where the FSDP run from scratch ends (the one-process and
    two-rank tolerance of the test above)."""
    import logitcache.training.loop as T

    out = tmp_path / "switched"
    original = T.save_checkpoint

    def stop_after_step_6(folder, state):
        original(folder, state)
        if state["step"] == 6:
            raise KeyboardInterrupt("stopped after the checkpoint of step 6")

    monkeypatch.setattr(T, "save_checkpoint", stop_after_step_6)
    with pytest.raises(KeyboardInterrupt):
        train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=out, preset="llama-tiny", alpha=0.5,
                                    shuffle_buffer=16, train=tiny_train(FSDP_STEPS, checkpoint_every=2)))
    monkeypatch.undo()
    assert load_checkpoint(out)["step"] == 6
    run_fsdp(student_args(tiny_cache, tiny_data, out) + ["--fsdp", "--resume"])
    assert losses(out) == pytest.approx(losses(fsdp_run), rel=1e-5)
    a, b = weights(fsdp_run), weights(out)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-4), name


def test_optimizer_state_made_before_the_first_step_equals_adamws_own():
    """The loop allocates AdamW's moments up front (memory layout); after two steps the weights and the state
    equal those of an AdamW that made its state itself, bit for bit."""
    from logitcache.training.loop import TrainConfig, allocate_optimizer_state, make_optimizer

    models = [build_model(get_preset("llama-tiny"), 300, seed=0) for _ in range(2)]
    optimizers = [make_optimizer(m, TrainConfig(lr=1e-2)) for m in models]
    allocate_optimizer_state(optimizers[0])
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        for model, optimizer in zip(models, optimizers):
            next_token_ce(model(input_ids=ids).logits, ids).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    ours, theirs = (o.state_dict()["state"] for o in optimizers)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].keys() == theirs[key].keys()
        for name in ours[key]:
            assert torch.equal(ours[key][name], theirs[key][name]) and ours[key][name].dtype == theirs[key][name].dtype
