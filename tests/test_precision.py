"""Precision: `--precision bf16/fp16` autocasts on CPU too (auto stays fp32 there), and the teachers'
head and its logit post-processing run in fp32 whatever the autocast."""
import numpy as np
import pytest
import torch

from conftest import dump_config, tiny_train
from logitcache import open_cache
from logitcache.distributed import autocast_for, resolve_precision
from logitcache.dump import dump
from logitcache.student import StudentConfig, train_student
from logitcache.train import read_metrics

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
    _, ids32, p32 = open_cache(caches["fp32"]).read(0, 16)
    _, ids16, p16 = open_cache(caches["bf16"]).read(0, 16)
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
