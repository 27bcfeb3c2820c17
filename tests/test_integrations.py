"""The cache in other trainers (logitcache/integrations): Trainer parity with train-student, the dataset under
DataLoader workers and DistributedSampler ranks, and the examples."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_train
from logitcache.integrations import CacheDataset, CacheOrderSampler, collate
from logitcache.store import open_cache
from logitcache.targets import batch_arrays

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """A cache with teacher_count: the odd corpus, one tiny teacher on a Metaspace BPE of its own."""
    from conftest import dump_config
    from logitcache.dump import dump
    from logitcache.prepare import PrepareConfig, prepare
    from test_cross_tokenizer import odd_corpus, teacher_folder, teacher_metaspace

    root = tmp_path_factory.mktemp("counted")
    data = root / "data"
    prepare(PrepareConfig(data=odd_corpus(root / "raw"), out=data, vocab_size=300, seq_len=32))
    teacher = teacher_folder(root, "llama-metaspace", teacher_metaspace(), "llama", 2)
    cache = root / "cache.zarr"
    dump(dump_config(data, [teacher], cache, combine="mean-probs", max_chunks=48, min_coverage=0.2, temperature=1.0))
    return {"data": data, "cache": cache}


def expected_item(reader, index: int) -> dict[str, np.ndarray]:
    """open_cache's own decoding of one chunk, in the dataset's (id) order."""
    r = reader.layout.block_rows
    arrays = batch_arrays(reader.read_block(index // r, by_prob=False).rows(index % r))
    return arrays | {"labels": arrays["input_ids"]}


def same_item(item: dict, expected: dict) -> bool:
    return item.keys() == expected.keys() and all(np.array_equal(item[k].numpy(), expected[k]) for k in item)


# --- Trainer parity -------------------------------------------------------------------------------------------------

def trainer_parity(cache: Path, data: Path, tmp_path: Path, alpha: float = 0.5, fused_head: bool = True
                   ) -> tuple[list[float], list[float]]:
    """20 steps of train-student and of transformers.Trainer (DistillTrainer) with train-student's model init,
    seed, data order (CacheOrderSampler), batch, optimizer (make_optimizer), schedule (lr_lambda) and
    clipping: the loss of every step of each."""
    from transformers import TrainingArguments

    from logitcache.data.prepared import load_data
    from logitcache.integrations.hf import DistillTrainer
    from logitcache.train_student import StudentConfig, student_model, train_student
    from logitcache.training.loop import lr_lambda, make_optimizer

    config = StudentConfig(cache=cache, data=data, out=tmp_path / "student", preset="llama-tiny", alpha=alpha,
                           shuffle_buffer=12, train=tiny_train(20, eval_every=0, checkpoint_every=0))
    report = train_student(config)
    theirs = [r["loss"] for r in report.history if "loss" in r]

    cfg = config.train
    model = student_model(config, load_data(data))
    dataset = CacheDataset(cache, data)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(min(cfg.warmup_steps, cfg.max_steps // 2),
                                                                       cfg.max_steps))
    args = TrainingArguments(str(tmp_path / "hf"), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
                             max_grad_norm=1.0, seed=cfg.seed, use_cpu=True, report_to=[], save_strategy="no",
                             logging_steps=1, dataloader_num_workers=0, disable_tqdm=True)
    losses = []

    class Recording(DistillTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    torch.manual_seed(cfg.seed)  # train-student's loop seeds before its first step
    trainer = Recording(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, scheduler),
                        train_sampler=CacheOrderSampler(dataset, cfg.batch_size, cfg.seed, config.shuffle_buffer),
                        loss_options=dataset.loss_options(alpha, config.tail, config.kl_reduction),
                        fused_head=fused_head)
    trainer.train()
    assert (trainer.head is not None) == fused_head
    return theirs, losses


@pytest.mark.parametrize("fused_head", [True, False])
def test_trainer_gives_train_students_losses_on_a_topk_cache(tiny_cache, tiny_data, tmp_path, fused_head):
    """train-student takes the fused head loss; the Trainer the same, or the full logits (fused_head=False)."""
    theirs, ours = trainer_parity(tiny_cache, tiny_data, tmp_path, fused_head=fused_head)
    assert len(theirs) == len(ours) == 20
    assert max(abs(a - b) for a, b in zip(theirs, ours)) < 1e-5, list(zip(theirs, ours))
    assert theirs[0] - theirs[-1] > 0.1  # it trains: a wrong order or schedule would not keep step with it


@pytest.mark.slow
def test_trainer_gives_train_students_losses_on_a_cache_with_teacher_count(counted, tmp_path):
    assert (open_cache(counted["cache"]).read(0, 48).teacher_count == 0).any()  # masked positions exist
    theirs, ours = trainer_parity(counted["cache"], counted["data"], tmp_path)
    assert len(theirs) == len(ours) == 20
    assert max(abs(a - b) for a, b in zip(theirs, ours)) < 1e-5, list(zip(theirs, ours))


def test_the_trainer_keeps_the_teacher_columns(tiny_cache, tiny_data, tmp_path):
    """remove_unused_columns=True (Trainer's default) would drop topk_ids and topk_probs: they reach the loss."""
    from transformers import TrainingArguments

    from logitcache.integrations.hf import DistillTrainer
    from logitcache.teachers.models import build_model, get_preset

    seen = []

    class Seeing(DistillTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.append(sorted(inputs))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, max_steps=2, use_cpu=True, report_to=[],
                             save_strategy="no", remove_unused_columns=True, disable_tqdm=True)
    Seeing(model=build_model(get_preset("llama-tiny"), 300), args=args, train_dataset=CacheDataset(tiny_cache, tiny_data)
           ).train()
    assert seen and all(keys == ["input_ids", "labels", "topk_ids", "topk_probs"] for keys in seen)


# --- the dataset ------------------------------------------------------------------------------------------------------

def test_every_item_is_open_caches_decoding_and_the_dataset_pickles(counted):
    dataset = CacheDataset(counted["cache"], counted["data"], blocks_in_memory=2)
    reader = open_cache(counted["cache"])
    assert len(dataset) == len(reader) == 48
    for index in [0, 47, 9, 8, 30, 1]:  # blocks out of order: some evicted and read again
        assert same_item(dataset[index], expected_item(reader, index))
    assert "teacher_count" in dataset[0] and dataset.loss_options()["temperature"] == 1.0
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._reader is None and same_item(copy[5], expected_item(reader, 5))
    batch = collate([dataset[i] for i in (3, 4)])
    assert batch["topk_ids"].shape == (2, 32, 8) and batch["teacher_count"].shape == (2, 32)


def test_the_dataset_refuses_other_data_another_split_and_a_bad_block(tiny_cache, counted, copy_of):
    from logitcache.errors import CacheCorruptError, LogitcacheError
    from logitcache.store.cache import block_chunk_path

    with pytest.raises(LogitcacheError, match="tokenizer"):
        CacheDataset(tiny_cache, counted["data"])
    with pytest.raises(LogitcacheError, match="'train' split, not 'dev'"):
        CacheDataset(tiny_cache, split="dev")
    bad = copy_of(tiny_cache)
    chunk = block_chunk_path(bad, "topk_probs", 1)
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    dataset = CacheDataset(bad)
    dataset[0]  # block 0 is intact
    with pytest.raises((CacheCorruptError, LogitcacheError)):
        dataset[8]


def test_a_pickled_dataset_refuses_a_cache_replaced_or_left_incomplete_since(tiny_cache, counted, copy_of):
    from logitcache.errors import LogitcacheError
    from logitcache.store.cache import block_chunk_path

    path = copy_of(tiny_cache)
    dataset = CacheDataset(path)
    pickled = pickle.dumps(dataset)  # what a DataLoader worker gets: the location, not the reader
    block_chunk_path(path, "done", 2).unlink()  # a block no longer done (a re-dump under way)
    with pytest.raises(LogitcacheError, match="incomplete"):
        pickle.loads(pickled)[0]
    shutil.rmtree(path)
    shutil.copytree(counted["cache"], path)  # another complete cache at the same place
    with pytest.raises(LogitcacheError, match="changed since this dataset opened it"):
        pickle.loads(pickled)[0]
    shutil.rmtree(path)
    shutil.copytree(tiny_cache, path)  # the same cache again: read as before
    assert same_item(pickle.loads(pickled)[5], {k: v.numpy() for k, v in dataset[5].items()})


def test_the_dataset_reads_s3_as_disk_and_pickles_its_url(s3, tiny_cache):
    from typer.testing import CliRunner

    from logitcache_cli.app import app

    url = f"{s3}/cache.zarr"
    assert CliRunner().invoke(app, ["copy", str(tiny_cache), url]).exit_code == 0
    remote, local = CacheDataset(url), CacheDataset(tiny_cache)
    copy = pickle.loads(pickle.dumps(remote))
    for index in (0, 13, 39):
        assert same_item(copy[index], {k: v.numpy() for k, v in local[index].items()})


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_two_dataloader_workers_see_every_chunk_once(tiny_cache, context):
    dataset = CacheDataset(tiny_cache)
    reader = open_cache(tiny_cache)
    sampler = CacheOrderSampler(dataset, batch_size=8, seed=1, buffer_rows=12)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, collate_fn=collate, num_workers=2,
                                         multiprocessing_context=context, persistent_workers=True)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = list(loader)
        assert sorted(order) == list(range(40))
        for b, batch in enumerate(batches):
            expected = collate([{k: torch.from_numpy(v) for k, v in expected_item(reader, i).items()}
                                for i in order[8 * b:8 * b + 8]])
            assert all(torch.equal(batch[k], expected[k]) for k in expected) and batch.keys() == expected.keys()
    assert order != list(range(40))


@pytest.mark.slow
def test_a_distributed_sampler_over_two_gloo_ranks_sees_every_chunk_once(tiny_cache, tmp_path):
    """Two real processes (gloo), each a DataLoader over DistributedSampler: every chunk once per epoch, each
    item equal to open_cache's decoding in that process."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    import socket

    with socket.socket() as probe:  # a free port (other tests' process groups may hold the usual ones)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(tiny_cache), str(tmp_path / f"rank{r}.json")],
                              env=dict(env, RANK=str(r)), stderr=subprocess.PIPE, text=True) for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        rows = seen[0][epoch]["rows"] + seen[1][epoch]["rows"]
        assert sorted(rows) == list(range(40))  # 40 rows over 2 ranks: no padding, no repeat
        assert seen[0][epoch]["equal"] and seen[1][epoch]["equal"]
    assert seen[0]["0"]["rows"] != seen[0]["1"]["rows"]  # set_epoch reshuffles


RANK_SCRIPT = '''
import json, sys
import numpy as np, torch, torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from logitcache.integrations import CacheDataset, collate
from logitcache.store import open_cache
from logitcache.targets import batch_arrays

dist.init_process_group("gloo")
rank = dist.get_rank()
dataset = CacheDataset(sys.argv[1])
reader = open_cache(sys.argv[1])
sampler = DistributedSampler(dataset, shuffle=True, seed=3)
loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=collate, num_workers=1)
out = {}
for epoch in range(2):
    sampler.set_epoch(epoch)
    rows = list(sampler)
    equal = True
    for b, batch in enumerate(loader):
        for j, index in enumerate(rows[4 * b:4 * b + 4]):
            r = reader.layout.block_rows
            want = batch_arrays(reader.read_block(index // r, by_prob=False).rows(index % r))
            want["labels"] = want["input_ids"]
            equal &= batch.keys() == want.keys() and all(np.array_equal(batch[k][j].numpy(), want[k]) for k in want)
    out[epoch] = {"rows": rows, "equal": bool(equal)}
    gathered = [None, None]
    dist.all_gather_object(gathered, rows)  # both ranks reach every epoch together
json.dump(out, open(sys.argv[2], "w"))
dist.destroy_process_group()
'''


# --- the examples and the README ------------------------------------------------------------------------------------

def load_example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["plain_loop", pytest.param("hf_trainer", marks=pytest.mark.slow),
                                  pytest.param("trl_sft", marks=pytest.mark.slow)])
def test_every_example_trains(name, tiny_cache, tiny_data, tmp_path):
    example = load_example(name)
    if name == "plain_loop":
        losses = example.main(str(tiny_cache), str(tiny_data), steps=12)
        assert len(losses) == 12 and losses[-1] < losses[0]
        return
    trainer = example.main(str(tiny_cache), str(tiny_data), steps=12, out=str(tmp_path / "out"))
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert logged and all(np.isfinite(r["loss"]) and "kl" in r and "ce" in r for r in logged)
    assert trainer.state.global_step == 12


def test_the_readme_trainer_example_runs(tiny_cache, tiny_data, tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use the cache in your own trainer"):]
    code = section[section.index("```python\n") + 10:section.index("```\n", section.index("```python\n") + 10)]
    assert 10 <= len(code.strip().splitlines()) <= 20
    for old, new in (("work/cache.zarr", str(tiny_cache)), ("work/data", str(tiny_data)),
                     ("work/hf-student", str(tmp_path / "out")), ("max_steps=200", "max_steps=3")):
        assert old in code
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["trainer"].state.global_step == 3


# --- export to Axolotl's KD format ------------------------------------------------------------------------------------

def axolotl_kd_loss_sum(logits, target_token_ids, target_logprobs, target_mask, temperature):
    """Axolotl's soft loss as its source computes it (integrations/kd/kernels/liger.py at 00bfeb42,
    distillation_loss_fn with beta 0 and normalize_topk, utils.normalize_logprobs; forward scales by T^2):
    the sum over valid slots of p_t (log p_t - log q), q the student's top-K probabilities renormalised over
    the K slots. Row j of the targets pairs with the student's logits at position j (README, "Target
    alignment")."""
    scaled = logits.float() / temperature  # (B, T, V)
    topk = scaled.gather(-1, target_token_ids) - torch.logsumexp(scaled, -1, keepdim=True)  # (B, T, K)
    topk = topk - torch.logsumexp(topk, -1, keepdim=True)  # normalize_logprobs: over all K slots
    valid = target_mask.bool()
    teacher = target_logprobs.float()[valid]
    return (teacher.exp() * (teacher - topk[valid])).sum() * temperature**2


def exported(cache: Path, out: Path) -> dict[str, torch.Tensor]:
    from typer.testing import CliRunner

    import datasets
    from logitcache_cli.app import app

    result = CliRunner().invoke(app, ["export-targets", str(cache), str(out), "--format", "axolotl"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "logitcache_export.json").read_text())
    assert summary["temperature"] == summary["axolotl_config"]["kd_temperature"] == open_cache(cache).attrs["temperature"]
    return datasets.load_from_disk(str(out)).with_format("torch")[:]


@pytest.mark.parametrize("which", ["topk", "counted"])
def test_the_axolotl_export_reads_back_as_the_cache_and_gives_logitcaches_loss(which, tiny_cache, counted, tmp_path):
    from logitcache.training.losses import distill_loss

    cache = tiny_cache if which == "topk" else counted["cache"]
    columns = exported(cache, tmp_path / "kd")
    cached = open_cache(cache).read(0, len(open_cache(cache)))  # by decreasing probability, as exported
    assert set(columns) == {"input_ids", "labels", "attention_mask", "target_token_ids", "target_logprobs", "target_mask"}
    assert np.array_equal(columns["input_ids"].numpy(), cached.tokens)
    assert np.array_equal(columns["labels"].numpy(), cached.tokens)
    assert np.array_equal(columns["target_token_ids"].numpy(), cached.ids)
    covered = np.ones(cached.tokens.shape, bool) if cached.teacher_count is None else cached.teacher_count > 0
    mask = columns["target_mask"].numpy().astype(bool)
    assert np.array_equal(mask, (cached.probs > 0) & covered[..., None])
    kept = np.where(mask, cached.probs, 0).sum(-1, keepdims=True)
    probs_back = np.where(mask, np.exp(columns["target_logprobs"].numpy()) * kept, 0)
    assert np.abs(probs_back - np.where(mask, cached.probs, 0)).max() < 1e-6
    if which == "counted":
        assert (~covered).any() and not mask[~covered].any()  # teacher_count 0: the mask

    # the same positions both formats express: covered, every kept slot with p > 0
    same = torch.from_numpy(mask.all(-1) & covered)  # (N, T)
    assert same.float().mean() > 0.3
    torch.manual_seed(0)
    logits = torch.randn(*cached.tokens.shape, open_cache(cache).layout.vocab_size) * 3  # (N, T, V)
    temperature = float(open_cache(cache).attrs["temperature"])
    theirs = axolotl_kd_loss_sum(logits, columns["target_token_ids"].long(), columns["target_logprobs"],
                                 columns["target_mask"] * same[..., None], temperature) / same.sum()
    batch = batch_arrays(cached) | {"teacher_count": same.to(torch.uint8).numpy()}
    batch = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}
    ours, kl, _ = distill_loss(batch, logits=logits, alpha=0.0, temperature=temperature, tail="renormalize")
    assert abs(float(theirs) - float(kl)) < 1e-5 * max(1.0, abs(float(kl))), (float(theirs), float(kl))
    bucket, _, _ = distill_loss(batch, logits=logits, alpha=0.0, temperature=temperature, tail="bucket")
    assert abs(float(bucket) - float(theirs)) > 1e-3  # the tail bucket is what the format cannot carry


def test_the_export_refuses_sampled_targets_keeps_what_is_there_and_overwrites_on_request(tiny_data, tiny_teachers,
                                                                                         tiny_cache, tmp_path):
    from typer.testing import CliRunner

    import datasets

    from conftest import dump_config
    from logitcache.dump import dump
    from logitcache_cli.app import app

    sampled = tmp_path / "sampled.zarr"
    dump(dump_config(tiny_data, tiny_teachers, sampled, targets="sample", samples=8, max_chunks=8))
    out = tmp_path / "kd"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["export-targets", str(sampled), str(out), "--format", "axolotl", "--overwrite"])
    assert result.exit_code == 2 and "top-k targets only" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    assert CliRunner().invoke(app, ["export-targets", str(tiny_cache), str(out)]).exit_code == 2  # not empty
    result = CliRunner().invoke(app, ["export-targets", str(tiny_cache), str(out), "--max-rows", "12", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and datasets.load_from_disk(str(out)).num_rows == 12
