"""Shared fixtures: a tiny synthetic corpus, a prepared data dir, two tiny teachers and a cache.

Everything is built in-process from configs (no downloads): tokenizers trained on a few hundred
lines, models from the `*-tiny` presets, stores in tmp dirs. Session-scoped fixtures are shared
read-only; tests that modify a store copy it first.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from logitcache.runtime.process import tune_process

tune_process()  # as the CLI does, before torch is imported

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)

SUBJECTS = ["the cat", "a dog", "my mother", "the little girl", "our teacher", "the old man", "a bird", "the king"]
VERBS = ["sees", "likes", "finds", "wants", "takes", "holds", "makes", "calls"]
OBJECTS = ["the ball", "a red apple", "some water", "the big house", "a small boat", "the green tree", "her book"]
ENDINGS = [".", "!", "?", " today.", " again.", " in the morning."]


def synthetic_lines(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
            for _ in range(n)]


def write_tiny_corpus(root: Path, lines_per_split: dict[str, int] | None = None) -> Path:
    """Two sources in the BabyLM layout: a transcript with speaker tags and plain prose."""
    sizes = lines_per_split or {"train": 600, "dev": 80, "test": 80}
    root.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(sizes.items()):
        (root / f"childes.{split}").write_text("".join(f"*CHI:\t{line}\n" for line in synthetic_lines(n, 10 + i)))
        prose = synthetic_lines(n, 20 + i)
        (root / f"stories.{split}").write_text("\n".join(" ".join(prose[j:j + 4]) for j in range(0, n, 4)) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_raw) -> Path:
    from logitcache.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("work") / "data"
    prepare(PrepareConfig(data=tiny_raw, out=out, vocab_size=300, seq_len=32))
    return out


def tiny_train(max_steps: int = 12, **overrides):
    from logitcache.training.loop import TrainConfig

    settings = dict(lr=3e-3, batch_size=8, max_steps=max_steps, warmup_steps=2, val_chunks=16, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory, tiny_data) -> tuple[Path, Path]:
    from logitcache.train_teacher import TeacherConfig, train_teacher

    root = tmp_path_factory.mktemp("teachers")
    dirs = []
    for arch in ("llama", "gpt2"):
        out = root / arch
        train_teacher(TeacherConfig(data=tiny_data, out=out, arch=arch, preset=f"{arch}-tiny", train=tiny_train(15)))
        dirs.append(out)
    return tuple(dirs)


def dump_config(data: Path, teachers, out: Path, **overrides):
    from logitcache.dump import DumpConfig

    settings = dict(data=data, teachers=tuple(teachers), out=out, top_k=8, temperature=2.0, block_rows=8,
                    batch_size=4, max_chunks=40, device="cpu", prob_dtype="sqrt-u7")
    settings.update(overrides)
    return DumpConfig(**settings)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, tiny_data, tiny_teachers) -> Path:
    from logitcache.dump import dump

    out = tmp_path_factory.mktemp("caches") / "cache.zarr"
    dump(dump_config(tiny_data, tiny_teachers, out))
    return out


@pytest.fixture
def copy_of(tmp_path):
    def copy(path: Path) -> Path:
        target = tmp_path / Path(path).name
        shutil.copytree(path, target)
        return target

    return copy


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 server (moto's, in its own process) on a free local port, for the whole session."""
    from s3_server import serve

    with serve("moto") as url:
        yield url


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request) -> str:
    """A fresh bucket on the moto server, with the standard AWS variables pointing at it (inherited by
    subprocesses: torchrun, the CLI); returns "s3://BUCKET"."""
    import re

    from s3_server import CREDENTIALS, make_bucket

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    import uuid

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:12]
    make_bucket(s3_endpoint, bucket)
    return f"s3://{bucket}"
