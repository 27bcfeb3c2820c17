"""Precision: `--precision bf16/fp16` autocasts on CPU too (auto stays fp32 there), and the teachers'
head and its logit post-processing run in fp32 whatever the autocast."""
import numpy as np
import pytest
import torch
import transformers

from conftest import dump_config, tiny_train
from logitcache import open_cache
from logitcache.runtime.device import autocast_for, resolve_precision
from logitcache.dump import dump
from logitcache.teachers.ensemble import Ensemble
from logitcache.train_student import StudentConfig, train_student
from logitcache.training.loop import read_metrics

CPU = torch.device("cpu")


@pytest.mark.parametrize("precision,dtype", [("auto", torch.float32), ("fp32", torch.float32),
                                             ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cpu_autocast_follows_the_precision(precision, dtype):
    layer = torch.nn.Linear(8, 8)
    with autocast_for(CPU, precision)():
        assert layer(torch.randn(2, 8)).dtype == dtype
    assert resolve_precision(CPU, precision) == {"auto": "fp32"}.get(precision, precision)


def test_bf16_dump_on_cpu_differs_from_fp32_and_stays_close(tmp_path, tiny_data, tiny_teachers):
    caches = {}
    for precision in ("fp32", "bf16"):
        caches[precision] = tmp_path / f"{precision}.zarr"
        dump(dump_config(tiny_data, tiny_teachers, caches[precision], precision=precision, prob_dtype="float32",
                         max_chunks=16))
    cached = open_cache(caches["fp32"]).read(0, 16)
    ids32, p32 = cached.ids, cached.probs
    cached = open_cache(caches["bf16"]).read(0, 16)
    ids16, p16 = cached.ids, cached.probs
    assert not np.array_equal(p32, p16)  # the option reaches the teachers' forward
    same_ids = ids32 == ids16
    assert same_ids.mean() > 0.9  # mostly the same top-k; near-ties may swap
    assert np.abs(p32 - p16)[same_ids].max() < 2e-2  # bf16 activations: a few 1e-3 of probability


def test_bf16_student_training_on_cpu_differs_from_fp32(tmp_path, tiny_data, tiny_cache):
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=out, preset="llama-tiny",
                                    train=tiny_train(3, precision=precision)))
        losses[precision] = np.array([m["loss"] for m in read_metrics(out) if "loss" in m])
    assert losses["fp32"].shape == losses["bf16"].shape == (3,)
    assert not np.array_equal(losses["fp32"], losses["bf16"])
    assert np.allclose(losses["fp32"], losses["bf16"], rtol=2e-2)  # the same run, in lower-precision activations


SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, vocab_size=320)
# each architecture's logit post-processing after lm_head, written out independently of transformers
HEADS = {
    "llama": (lambda: transformers.LlamaConfig(**SMALL), lambda z, c: z),
    "gemma2": (lambda: transformers.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=0.5),
               lambda z, c: c.final_logit_softcapping * torch.tanh(z / c.final_logit_softcapping)),
    "granite": (lambda: transformers.GraniteConfig(**SMALL, logits_scaling=0.125), lambda z, c: z / c.logits_scaling),
    "cohere": (lambda: transformers.CohereConfig(**SMALL, logit_scale=4.0), lambda z, c: z * c.logit_scale),
}
BF16_TOLERANCE = 5e-4  # max |p - p_fp32| at T = 1: bf16 activations before the head, everything after it fp32


@pytest.mark.parametrize("arch", list(HEADS))
def test_bf16_teachers_run_their_head_and_post_processing_in_fp32(arch):
    """Under bf16 autocast on CPU the ensemble equals the model's layers in bf16 followed by an fp32 head and the
    architecture's own post-processing in fp32 (to 1e-6), and stays within BF16_TOLERANCE of the fp32 forward.
    Measured here: 2e-4 from the fp32 forward for Granite, 3e-5 for Cohere, 2e-5 for Gemma-2, 4e-6 for llama
    (the fast head). A head run in bf16 is 8e-6 (Gemma-2) to 5e-4 (Cohere) from the fp32-head computation,
    and Granite 4e-4, Cohere 5e-4 from the fp32 forward."""
    make_config, post_process = HEADS[arch]
    torch.manual_seed(7)
    model = transformers.AutoModelForCausalLM.from_config(make_config()).eval()
    vocab = 300  # the tokenizer's ids; the embedding is padded to 320
    ids = torch.randint(3, vocab, (4, 32), generator=torch.Generator().manual_seed(0))
    bf16 = autocast_for(CPU, "bf16")
    with torch.no_grad():
        fp32 = torch.softmax(model(input_ids=ids).logits[..., :vocab], dim=-1)  # (B, T, V)
        with bf16():
            hidden = model.base_model(input_ids=ids).last_hidden_state  # (B, T, H), the layers in bf16
        head = model.get_output_embeddings().weight[:vocab]  # (V, H) fp32
        expected = torch.softmax(post_process(hidden.float() @ head.t(), model.config), dim=-1)
    probs = Ensemble([model], "mean-logits", 1.0, CPU, bf16, vocab_size=vocab).probs(ids)
    assert float((probs - expected).abs().max()) <= 1e-6
    assert float((probs - fp32).abs().max()) <= BF16_TOLERANCE
    assert "forward" not in model.get_output_embeddings().__dict__  # the fp32 head is only inside the ensemble's pass
