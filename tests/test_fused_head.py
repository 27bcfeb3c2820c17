"""Parity first: the fused head loss (training/losses/linear.py, from hidden states and the head in chunks
of tokens) against the autograd references on materialised logits, and train-student with it against
train-student on the full logits (--loss-chunk-tokens 0)."""
import logging

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_train
from logitcache.teachers.models import build_model, get_preset
from logitcache.train_student import DistillObjective, StudentConfig, train_student
from logitcache.training.losses import distill_loss, head_logits
from logitcache.training.losses.reference import (next_token_ce, retemper, sampled_kl, sampled_renormalized_kl,
                                                  sparse_kl)

B, T, H, V, K = 3, 47, 16, 123, 7  # odd shapes; 10-token chunks do not divide B * T = 141
SUB_ROWS = 3  # the loss body's sub-slices within a chunk: 10-token chunks run as 3 + 3 + 3 + 1 rows


@pytest.fixture(autouse=True)
def small_sub_slices(monkeypatch):
    """Sub-slices of SUB_ROWS rows at this module's vocabulary (at V = 123 a real sub-slice would hold the
    whole chunk), so every parity test below runs the sub-slice loop across chunk and sub-slice ends."""
    from logitcache.training.losses import linear

    monkeypatch.setitem(linear.SUB_SLICE_VALUES, "cpu", SUB_ROWS * V)
    assert linear.sub_slice_rows(V) == SUB_ROWS


def targets_of(kind: str, t: int = T, seed: int = 0) -> dict:
    """A batch of `kind` targets: topk, mass (p = 0 padding past each position's count, id 0, repeating and
    equal to kept ids) or sample (unique drawn ids, weight 0 at padding), with a teacher_count mask."""
    g = torch.Generator().manual_seed(seed)
    probs, ids = torch.softmax(torch.randn(B, t, V, generator=g) * 2, -1).topk(K, -1)
    batch = {"input_ids": torch.randint(0, V, (B, t), generator=g), "topk_ids": ids, "topk_probs": probs,
             "teacher_count": torch.randint(0, 3, (B, t), generator=g)}
    if kind == "mass":
        count = torch.randint(1, K + 1, (B, t, 1), generator=g)
        pad = torch.arange(K) >= count  # (B, T, K)
        batch["topk_ids"] = ids.masked_fill(pad, 0)
        batch["topk_probs"] = probs.masked_fill(pad, 0.0)
    if kind == "sample":
        drawn = torch.rand(B, t, K, generator=g) > 0.25
        batch["sample_weights"] = torch.rand(B, t, K, generator=g) * 2 * drawn
        batch["topk_probs"] = probs * (torch.rand(B, t, K, generator=g) > 0.1)  # some codes rounded to 0
    return batch


def reference_loss(logits, batch, kind, tail, alpha, temperature, reduction="token", retemper_from=None):
    """alpha * next_token_ce + (1 - alpha) * the reference KL, through autograd on `logits`."""
    ce = next_token_ce(logits, batch["input_ids"])
    if alpha >= 1.0:
        return ce
    mask = (batch["teacher_count"] > 0).float()
    ids, probs = batch["topk_ids"], batch["topk_probs"]
    if retemper_from is not None:
        probs = retemper(probs, retemper_from, temperature)
    if kind == "sample":
        loss_of = sampled_renormalized_kl if tail == "renormalize" else sampled_kl
        kl = loss_of(logits, ids, probs, batch["sample_weights"], temperature, reduction, mask)
    else:
        kl = sparse_kl(logits, ids, probs, temperature, tail, reduction, mask)
    return alpha * ce + (1.0 - alpha) * kl


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) if a.numel() else 0.0


def head_params(bias: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).requires_grad_(True)
    weight = (torch.randn(V, H, generator=g) * 0.5).requires_grad_(True)
    b = (torch.randn(V, generator=g) * 0.5).requires_grad_(True) if bias else None
    return hidden, weight, b


def parity_errors(batch, kind, tail, alpha, temperature, bias=True, chunk=10, reduction="token", scale=1.0,
                  softcap=None, retemper_from=None, device="cpu") -> dict:
    """The fused head loss against the reference on materialised logits, on `device` (benchmarks/gpu_parity.py
    runs it on CUDA): relative errors of the loss, its CE, its kl/ce split and the gradients, and whether kl
    is None and ce carries a gradient."""
    batch = {k: v.to(device) for k, v in batch.items()}
    hidden, weight, bias_ = (None if p is None else p.detach().to(device).requires_grad_(True)
                             for p in head_params(bias))
    params = [p for p in (hidden, weight, bias_) if p is not None]
    loss, kl, ce = distill_loss(batch, hidden=hidden, head_weight=weight, head_bias=bias_, alpha=alpha,
                                temperature=temperature, tail=tail, reduction=reduction,
                                targets="sample" if kind == "sample" else "topk", retemper_from=retemper_from,
                                logit_scale=scale, logit_softcap=softcap, chunk_tokens=chunk)
    got = torch.autograd.grad(0.5 * loss, params)  # a factor, as gradient accumulation passes one
    logits = head_logits(hidden, weight, bias_, scale, softcap)  # (B, T, V) materialised
    ref = reference_loss(logits, batch, kind, tail, alpha, temperature, reduction, retemper_from)
    want = torch.autograd.grad(0.5 * ref, params)
    errors = {"loss": rel(loss, ref), "ce": rel(ce, next_token_ce(logits, batch["input_ids"])),
              "split": 0.0 if kl is None else rel(alpha * ce + (1 - alpha) * kl, loss),
              "kl_is_none": kl is None, "ce_requires_grad": ce.requires_grad}
    errors.update({name: rel(a, b) for name, a, b in zip(("hidden", "weight", "bias"), got, want)})
    return errors


def check_parity(batch, kind, tail, alpha, temperature, **options):
    errors = parity_errors(batch, kind, tail, alpha, temperature, **options)
    assert errors["loss"] < 1e-5, errors
    assert not errors["ce_requires_grad"] and errors["ce"] < 1e-5, errors
    assert errors["kl_is_none"] == (alpha >= 1.0)
    assert errors["split"] < 1e-6, errors
    for name in ("hidden", "weight", "bias"):
        if name in errors:
            assert errors[name] < 1e-5, (name, errors[name])


@pytest.mark.parametrize("kind,tail", [("topk", "bucket"), ("topk", "renormalize"), ("mass", "bucket"),
                                       ("mass", "renormalize"), ("sample", "bucket"), ("sample", "renormalize")])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_head_loss_and_gradients_equal_the_reference(kind, tail, alpha, temperature):
    """Loss, hidden, weight and bias gradients within 1e-5 relative in fp32, with a teacher_count mask, at
    B=3, T=47, V=123 in 10-token chunks (the last one 1 token)."""
    check_parity(targets_of(kind), kind, tail, alpha, temperature)


@pytest.mark.parametrize("chunk", [1, 47, 141, 1000, 0])
def test_any_chunk_size_gives_the_same_loss(chunk):
    check_parity(targets_of("topk"), "topk", "bucket", 0.5, 2.0, bias=False, chunk=chunk)


@pytest.mark.parametrize("sub_rows", [1, 4, 10, 64])
@pytest.mark.parametrize("temperature,softcap", [(1.0, None), (2.0, None), (6.0, None), (2.0, 3.0)])
def test_any_sub_slice_size_gives_the_same_loss(monkeypatch, sub_rows, temperature, softcap):
    """Sub-slices of one row, of 4 rows (10-token chunks: 4 + 4 + 2), of the whole chunk and larger; the
    gradient written over the logits (T = 1, the sqrt route, q_T's own softmax) and beside them (soft cap)."""
    from logitcache.training.losses import linear

    monkeypatch.setitem(linear.SUB_SLICE_VALUES, "cpu", sub_rows * V)
    for kind, tail in (("topk", "bucket"), ("mass", "renormalize"), ("sample", "bucket")):
        check_parity(targets_of(kind), kind, tail, 0.5, temperature, softcap=softcap)


def test_auto_chunk_and_its_scratch_fit_the_budget(monkeypatch):
    """The automatic chunk's (C, V) buffer and the loss body's (sub-slice, V) tensors within
    CHUNK_BUDGET_BYTES, at today's vocabularies and the paper's, on CPU and CUDA: one at T <= 4, two with a
    soft cap, four where q_T has its own softmax."""
    from logitcache.training.losses import linear

    monkeypatch.undo()  # the module's small sub-slices off: the real ones
    for vocab in (16_000, 128_256, 151_936, 256_000):
        for device in ("cpu", "cuda"):
            for temperature, softcap, slices in ((2.0, None, 1), (1.0, None, 1), (2.0, 30.0, 2), (6.0, None, 4)):
                chunk = linear.auto_chunk_tokens(vocab, device=device, temperature=temperature, logit_softcap=softcap)
                scratch = slices * linear.sub_slice_rows(vocab, device)
                assert 0 < scratch < chunk, (vocab, device, chunk, scratch)
                assert (chunk + scratch) * vocab * 4 <= linear.CHUNK_BUDGET_BYTES < (chunk + scratch + 1) * vocab * 4


def test_auto_chunk_on_cpu_holds_the_embedding_gradient(monkeypatch):
    """On CPU the automatic chunk is at least 1.25 H tokens, where the budget gives fewer: its freed (C, V)
    buffer holds the (V, H) fp32 embedding gradient the backward allocates next. CUDA takes the budget alone."""
    from logitcache.training.losses import linear

    monkeypatch.undo()
    assert linear.auto_chunk_tokens(256_000, device="cpu", hidden_size=512) == 640  # the budget: 508
    budget_only = linear.auto_chunk_tokens(256_000, device="cuda")
    assert linear.auto_chunk_tokens(256_000, device="cuda", hidden_size=512) == budget_only == 492
    assert linear.auto_chunk_tokens(128_256, device="cpu", hidden_size=512) == (512 << 20) // (4 * 128_256) - 32
    for vocab, hidden in ((128_256, 2048), (151_936, 896), (256_000, 2304)):
        chunk = linear.auto_chunk_tokens(vocab, device="cpu", hidden_size=hidden)
        assert chunk * vocab >= 1.25 * vocab * hidden > (chunk - 1) * vocab, (vocab, hidden, chunk)


@pytest.mark.parametrize("temperature", [0.7, 3.0, 6.0])  # the pow route and q_T's own softmax
def test_other_temperatures_paper_reduction_and_retemper(temperature):
    check_parity(targets_of("mass"), "mass", "bucket", 0.3, temperature, reduction="paper")
    check_parity(targets_of("topk"), "topk", "bucket", 0.5, temperature, retemper_from=2.0)


def test_single_position_rows_and_no_mask():
    """T = 1: no position predicts a token (CE over no positions is 0, as the reference's empty mean
    would be nan: compared on the KL alone)."""
    batch = targets_of("topk", t=1)
    batch.pop("teacher_count")
    hidden, weight, _ = head_params(False)
    hidden = hidden[:, :1].detach().requires_grad_(True)
    loss, kl, ce = distill_loss(batch, hidden=hidden, head_weight=weight, alpha=0.0, temperature=2.0, chunk_tokens=2)
    got = torch.autograd.grad(loss, (hidden, weight))
    ref = sparse_kl(head_logits(hidden, weight, None), batch["topk_ids"], batch["topk_probs"], 2.0)
    want = torch.autograd.grad(ref, (hidden, weight))
    assert rel(loss, ref) < 1e-5 and float(ce) == 0.0
    assert all(rel(a, b) < 1e-5 for a, b in zip(got, want))


def test_soft_capped_and_scaled_heads_are_exact():
    for scale, softcap in ((1.0, 3.0), (0.25, None), (2.0, 5.0)):
        check_parity(targets_of("topk"), "topk", "bucket", 0.5, 2.0, scale=scale, softcap=softcap)


def tiny_batch(vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    probs, ids = torch.softmax(torch.randn(2, 12, vocab, generator=g) * 2, -1).topk(6, -1)
    return {"input_ids": torch.randint(0, vocab, (2, 12), generator=g), "topk_ids": ids, "topk_probs": probs}


def objective_grads(model, batch, chunk_tokens, targets="topk"):
    objective = DistillObjective(0.5, 2.0, "bucket", "token", targets, None, chunk_tokens)
    model.zero_grad(set_to_none=True)
    loss, metrics = objective(model, batch)
    loss.backward()
    return objective, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def llama(tied: bool, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=tied,
                                        **extra))


def assert_objectives_agree(model, batch, expect_fused=True):
    fused, loss, grads = objective_grads(model, batch, 5)
    plain, ref_loss, ref_grads = objective_grads(model, batch, 0)
    assert fused.fused is expect_fused and not plain.fused
    assert rel(loss, ref_loss) < 1e-5
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert rel(grads[name], ref_grads[name]) < 1e-5, name
    return fused


@pytest.mark.parametrize("tied", [False, True])
def test_students_with_tied_and_untied_heads_through_their_own_forward(tied):
    """DistillObjective's fused path (hidden states from the model's own forward, its head skipped) gives
    every parameter the gradient of the loss on the model's logits, the tied embedding's included."""
    model = llama(tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert_objectives_agree(model, tiny_batch(97))


def test_a_head_with_bias():
    model = llama(False)
    head = nn.Linear(32, 97, bias=True)
    nn.init.normal_(head.bias, std=0.5)
    model.lm_head = head
    fused = assert_objectives_agree(model, tiny_batch(97))
    assert fused.head.module is head


def test_gemma2_soft_capping_and_granite_scaling_are_applied_exactly():
    from transformers import Gemma2Config, Gemma2ForCausalLM, GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                           final_logit_softcapping=0.5))  # low: the cap bends these logits
    fused = assert_objectives_agree(gemma, tiny_batch(97))
    assert fused.head.logit_softcap == 0.5
    granite = GraniteForCausalLM(GraniteConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                               logits_scaling=4.0))
    assert assert_objectives_agree(granite, tiny_batch(97)).head.logit_scale == 0.25


def test_post_processing_the_config_does_not_name_is_refused_for_fusing(caplog):
    """A head whose logits the model changes after it (here halved by a subclass) cannot be fused: the
    full-logit path is taken with one warning, and the loss is the model's own."""
    from transformers import LlamaForCausalLM

    class Halved(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 0.5
            return out

    model = llama(False)
    halved = Halved(model.config)
    halved.load_state_dict(model.state_dict())
    with caplog.at_level(logging.WARNING):
        assert_objectives_agree(halved, tiny_batch(97), expect_fused=False)
    assert "post-processed after the head" in caplog.text


def test_training_parity_fused_head_against_full_logits(tmp_path, tiny_data, tiny_cache, caplog):
    """20 steps of train-student with the fused head loss in 7-token chunks (the default's one chunk here
    would run the head's matmul with the full logits' shapes) and with --loss-chunk-tokens 0: the same
    per-step losses (1e-5 relative) and final weights (1e-5 absolute, weights of magnitude ~1).
    Measured: 3e-7 for both. Per step the gradients agree to ~1e-7 relative (fp32 sums in another order
    over chunks); AdamW turns that into weight differences of the same order per step, which 20 steps keep
    far below 1e-5, while one wrong gradient term moves weights by ~lr = 3e-3 in a step."""
    from safetensors.torch import load_file

    reports, weights = {}, {}
    for chunk in (7, 0):
        out = tmp_path / f"s{chunk}"
        caplog.clear()
        reports[chunk] = train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=out, preset="llama-tiny",
                                                     loss_chunk_tokens=chunk, train=tiny_train(20)))
        weights[chunk] = load_file(out / "model.safetensors")
        assert "computed from its full logits" not in caplog.text  # the fused run took the fused head loss
    fused, plain = ([r["loss"] for r in reports[c].history if "loss" in r] for c in (7, 0))
    assert len(fused) == 20
    np.testing.assert_allclose(fused, plain, rtol=1e-5)
    assert reports[7].best_step == reports[0].best_step
    assert max(float((weights[7][k] - weights[0][k]).abs().max()) for k in weights[0]) < 1e-5
    assert max(float((weights[7][k] - build_model(get_preset("llama-tiny"), 300).state_dict()[k]).abs().max())
               for k in weights[0]) > 1e-2  # it trained


def test_loss_chunk_tokens_below_minus_one_is_refused():
    from logitcache.errors import LogitcacheError

    with pytest.raises(LogitcacheError, match="loss_chunk_tokens"):
        StudentConfig(cache="c", data="d", out="o", loss_chunk_tokens=-2)


@pytest.mark.slow
def test_torchrun_two_ranks_fused_head_equals_full_logits(tmp_path, tiny_data, tiny_cache):
    """Under DDP (2 gloo ranks) the head's gradient, made outside DDP's forward output, is still
    all-reduced: the fused run's losses and weights are the full-logit run's (measured: 8e-7)."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    losses, weights = {}, {}
    for chunk in (5, 0):
        out = tmp_path / f"s{chunk}"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                   "logitcache_cli", "train-student", "--cache", str(tiny_cache), "--data", str(tiny_data), "--out",
                   str(out), "--preset", "llama-tiny", "--max-steps", "6", "--batch-size", "8", "--lr", "3e-3",
                   "--warmup-steps", "1", "--val-chunks", "8", "--device", "cpu", "--loss-chunk-tokens", str(chunk)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "computed from its full logits" not in proc.stderr  # the fused run took the fused head loss
        losses[chunk] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                         if '"loss"' in line]
        weights[chunk] = load_file(out / "model.safetensors")
    assert len(losses[5]) == 6
    np.testing.assert_allclose(losses[5], losses[0], rtol=1e-5)
    assert max(float((weights[5][k] - weights[0][k]).abs().max()) for k in weights[0]) < 1e-5


def test_the_gpu_parity_script_passes_here_and_catches_a_wrong_loss(monkeypatch):
    """benchmarks/gpu_parity.py (run on a GPU box by gpu_check.sh) on CPU: every case within 1e-5, and a loss
    off by 1e-3 is reported."""
    import sys
    from pathlib import Path

    from logitcache.training.losses import linear

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_parity

    cases = gpu_parity.fused_head_cases("cpu")
    assert len(cases) == 16 and max(err for _, err in cases) < 1e-5
    real = linear.slice_loss_grad

    def off(*args, **kwargs):
        kl, ce = real(*args, **kwargs)
        return kl * 1.001, ce * 1.001

    monkeypatch.setattr(linear, "slice_loss_grad", off)
    assert min(err for _, err in gpu_parity.fused_head_cases("cpu")) > 1e-4
