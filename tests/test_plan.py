"""The memory plan (logitcache/training/plan.py) against independent counts: the parameters of a real model,
the bytes autograd really keeps for the backward (saved-tensor hooks), and the fit search against the plan
itself one row further. benchmarks/bench_plan.py checks the whole peak against a measured one."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from logitcache.training.loop import enable_activation_checkpointing
from logitcache.training.plan import GIB, ModelShape, Setup, largest_micro_batch, plan
from logitcache_cli.app import app

ROWS, SEQ = 2, 64


def llama(kv_heads=4, tied=False):
    return LlamaConfig(vocab_size=500, hidden_size=128, intermediate_size=352, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                       max_position_embeddings=SEQ)


def kept_bytes(model, ids) -> int:
    """Bytes of the distinct storages autograd keeps for the backward, parameters and the logits excepted."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids)
    return sum(size for ptr, size in storages.items() if ptr not in params)


@pytest.mark.parametrize("kv_heads,tied", [(4, False), (2, True)], ids=["mha-untied", "gqa-tied"])
def test_parameters_match_a_real_model(kv_heads, tied):
    config = llama(kv_heads, tied)
    model = LlamaForCausalLM(config)
    shape = ModelShape.of(config)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.tied == tied and shape.head_params == 500 * 128
    assert shape.root_params == shape.params - sum(p.numel() for p in model.model.layers.parameters())


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_activations_are_what_autograd_keeps(kv_heads, checkpointed):
    """fp32, train mode: the plan's activation term within 3% of the bytes the forward really saves."""
    config = llama(kv_heads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.train()
    if checkpointed:
        enable_activation_checkpointing(model)
    measured = kept_bytes(model, torch.randint(0, 500, (ROWS, SEQ)))
    planned = plan(ModelShape.of(config), Setup(ROWS, SEQ, precision="fp32", device="cpu",
                                                activation_checkpointing=checkpointed)).activations
    assert planned == pytest.approx(measured, rel=0.03)


def test_fsdp_shards_the_state_and_the_largest_batch_is_the_last_that_fits():
    shape = ModelShape.of(llama())
    one = plan(shape, Setup(4, SEQ, precision="bf16"))
    sharded = plan(shape, Setup(4, SEQ, world=4, fsdp=True, precision="bf16"))
    assert sharded.optimizer == 2 * math.ceil(shape.params / 4) * 4 and one.optimizer == 2 * shape.params * 4
    assert sharded.gradients * 4 >= one.gradients and sharded.peak < one.peak + one.other
    setup = Setup(1, SEQ, precision="bf16", loss_chunk_tokens=32)
    gib = 0.5 + plan(shape, Setup(40, SEQ, precision="bf16", loss_chunk_tokens=32)).peak / GIB + 1.0
    rows = largest_micro_batch(shape, setup, gib)
    fits = lambda r: plan(shape, Setup(r, SEQ, precision="bf16", loss_chunk_tokens=32)).peak <= (gib - 1.0) * GIB  # noqa: E731
    assert rows >= 40 and fits(rows) and not fits(rows + 1)


def test_the_fused_loss_and_checkpointing_lower_the_peak_at_a_large_vocabulary():
    shape = ModelShape.of(llama().__class__(**{**llama().to_dict(), "vocab_size": 128_256}))
    unfused = plan(shape, Setup(8, SEQ, precision="fp32", device="cpu"))
    fused = plan(shape, Setup(8, SEQ, precision="fp32", device="cpu", loss_chunk_tokens=128))
    assert unfused.loss == 2 * 8 * SEQ * 128_256 * 4 + SEQ * 128_256 * 4  # logits + gradient + a one-row slice
    # the chunk's (C, V) fp32 buffer and the loss body's (32, V) scratch (4M values on CPU), the hidden states'
    # gradient (N, H) and the head's (V, H), made in the forward
    assert fused.loss == (128 + 32) * 128_256 * 4 + 8 * SEQ * 128 * 4 + 128_256 * 128 * 4
    automatic = plan(shape, Setup(32, SEQ, precision="fp32", device="cpu", loss_chunk_tokens=-1))  # 2,048 tokens
    chunk = (512 << 20) // (4 * 128_256) - 32  # 1,014 tokens: buffer and scratch within 512 MB
    assert automatic.loss == (chunk + 32) * 128_256 * 4 + 32 * SEQ * 128 * 4 + 128_256 * 128 * 4
    assert fused.peak < unfused.peak


def test_the_plan_takes_the_losss_cpu_floor_of_1_25_h_tokens():
    """At V = 256,000 and H = 512 the budget gives 508 tokens and the CPU floor 640: the plan's loss holds a
    (640 + 16)-row buffer on CPU, and the budget's (492 + 32 on CUDA's larger sub-slices) on CUDA."""
    config = LlamaConfig(vocab_size=256_000, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=8, max_position_embeddings=SEQ)
    shape = ModelShape.of(config)
    n = 32 * SEQ  # 2,048 tokens: more than either chunk
    cpu = plan(shape, Setup(32, SEQ, precision="fp32", device="cpu", loss_chunk_tokens=-1))
    cuda = plan(shape, Setup(32, SEQ, precision="fp32", device="cuda", loss_chunk_tokens=-1))
    grads = n * 512 * 4 + 256_000 * 512 * 4  # d h (N, H) and the head's (V, H)
    assert cpu.loss == (640 + 16) * 256_000 * 4 + grads
    assert cuda.loss == (492 + 32) * 256_000 * 4 + grads


def test_plan_on_cpu_with_the_fused_loss_says_rss_runs_above_it():
    runner = CliRunner()
    args = ["plan", "--preset", "llama-tiny", "--vocab-size", "1000", "--seq-len", "64", "--batch-size", "8"]
    fused = runner.invoke(app, args + ["--device", "cpu"])
    unfused = runner.invoke(app, args + ["--device", "cpu", "--loss-chunk-tokens", "0"])
    gpu = runner.invoke(app, args)
    assert fused.exit_code == unfused.exit_code == gpu.exit_code == 0, fused.output
    assert "RSS runs above" in " ".join(fused.output.split())
    assert "RSS" not in unfused.output and "RSS" not in gpu.output


def test_plan_command(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--preset", "llama-tiny", "--vocab-size", "1000", "--seq-len", "64",
                                 "--batch-size", "8", "--world-size", "2", "--gpu-memory", "8", "--json", "-"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    variants = payload["variants"]
    assert set(variants) == {"DDP", "DDP + checkpointing", "FSDP", "FSDP + checkpointing"}
    assert variants["DDP"]["as_set"] and variants["FSDP + checkpointing"]["max_batch_size"] > 0
    refused = runner.invoke(app, ["plan", "--preset", "llama-tiny"])
    assert refused.exit_code == 2 and "--vocab-size" in refused.output


@pytest.mark.parametrize("chunk", [0, 64])
def test_plan_command_passes_every_setting(tmp_path, chunk):
    """Every option reaches the plan: the CLI's numbers are the plan of the same shape and setup."""
    config = llama(kv_heads=2)
    config.save_pretrained(tmp_path)
    result = CliRunner().invoke(app, [
        "plan", "--init-from", tmp_path / "config.json", "--seq-len", SEQ, "--batch-size", 16, "--grad-accum", 2,
        "--world-size", 2, "--fsdp", "--activation-checkpointing", "--precision", "fp32", "--device", "cpu",
        "--top-k", 16, "--loss-chunk-tokens", chunk, "--json", "-"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout[result.stdout.index("{"):])["variants"]["FSDP + checkpointing"]
    expected = plan(ModelShape.of(config), Setup(4, SEQ, world=2, fsdp=True, activation_checkpointing=True,
                                                 precision="fp32", device="cpu", top_k=16, loss_chunk_tokens=chunk))
    assert got["as_set"] and got == pytest.approx(expected.gib() | {"as_set": True})
