"""Overhead of training through Hugging Face's Trainer with the cache dataset against train-student, the same
student, cache, batch, steps, optimizer, schedule and data order.

    python benchmarks/bench_trainer.py [--student llama-student-small]

Arms: train-student (its loader: decode threads, a shuffle buffer) and DistillTrainer over CacheDataset with
CacheOrderSampler (DataLoader workers decode blocks). Each arm runs in its own process, the arms alternate
over --repeats rounds, medians are quoted; tokens/s counts the steps after the first two. Prints a table,
then one JSON line (trainer_vs_train_student: the goal is >= 0.9).
"""
from __future__ import annotations

from logitcache.runtime.process import tune_process

tune_process()  # before torch is imported (logitcache/runtime/process.py)

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from bench_train import WARMUP, steady_tokens_per_s  # noqa: E402
from common import emit_json, median, parse_or_run_arm, print_table, run_arms_interleaved, synthetic_data  # noqa: E402


def arm_train_student(work: Path, args) -> float:
    from logitcache.train_student import StudentConfig, train_student
    from logitcache.training.loop import read_metrics

    out = work / "out-train-student"
    shutil.rmtree(out, ignore_errors=True)
    train_student(student_config(work, args, out))
    return steady_tokens_per_s(read_metrics(out), args.batch_size * 128)


def student_config(work: Path, args, out: Path):
    from logitcache.train_student import StudentConfig
    from logitcache.training.loop import TrainConfig

    train = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, warmup_steps=2, val_chunks=8, device="cpu",
                        eval_every=0, checkpoint_every=0)
    return StudentConfig(cache=work / "cache.zarr", data=work / "data", out=out, preset=args.student, alpha=0.5,
                         train=train)


def arm_trainer(work: Path, args) -> float:
    from transformers import TrainerCallback, TrainingArguments

    from logitcache.data.prepared import load_data
    from logitcache.integrations import CacheDataset, CacheOrderSampler
    from logitcache.integrations.hf import DistillTrainer
    from logitcache.train_student import student_model
    from logitcache.training.loop import lr_lambda, make_optimizer

    config = student_config(work, args, work / "out-trainer")
    cfg = config.train
    model = student_model(config, load_data(config.data))
    dataset = CacheDataset(config.cache, config.data)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(2, cfg.max_steps))
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

    hf_args = TrainingArguments(str(config.out), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
                                max_grad_norm=1.0, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                                dataloader_num_workers=args.workers, disable_tqdm=True)
    trainer = DistillTrainer(model=model, args=hf_args, train_dataset=dataset, optimizers=(optimizer, scheduler),
                             callbacks=[Clock()],
                             train_sampler=CacheOrderSampler(dataset, cfg.batch_size, cfg.seed, config.shuffle_buffer),
                             loss_options=dataset.loss_options(0.5))
    trainer.train()
    return (len(stamps) - WARMUP) * args.batch_size * 128 / (stamps[-1] - stamps[WARMUP - 1])


def run_arm(arm: str, work: Path, args) -> dict:
    torch.set_num_threads(args.threads)
    return {"arm": arm, "tokens_per_s": arm_train_student(work, args) if arm == "train-student" else arm_trainer(work, args)}


def setup(work: Path, args) -> None:
    from logitcache.dump import DumpConfig, dump
    from logitcache.teachers.models import build_model, get_preset

    synthetic_data(work / "data", args.vocab_size, args.chunks)
    teacher = work / "teacher"
    build_model(get_preset("llama-small"), args.vocab_size).save_pretrained(str(teacher))
    shutil.copy(work / "data" / "tokenizer.json", teacher / "tokenizer.json")
    dump(DumpConfig(data=work / "data", teachers=(teacher,), out=work / "cache.zarr", top_k=32, block_rows=64,
                    temperature=2.0, device="cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--student", default="llama-student-small")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--chunks", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="the Trainer's DataLoader workers")
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_or_run_arm(parser, run_arm)
    if args is None:
        return
    work = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    try:
        setup(work, args)
        results = run_arms_interleaved(__file__, ["train-student", "trainer"], args, work)
        speed = {arm: median([r["tokens_per_s"] for r in rs]) for arm, rs in results.items()}
        ratio = speed["trainer"] / speed["train-student"]
        print_table(f"student {args.student}, vocab {args.vocab_size}, batch {args.batch_size}x128, {args.steps} steps, "
                    f"{args.threads} threads (medians of {args.repeats})", ["arm", "tokens/s", "vs train-student"],
                    [[arm, s, s / speed["train-student"]] for arm, s in speed.items()])
        emit_json({"bench": "trainer", "student": args.student, "tokens_per_s": speed,
                   "runs": {arm: [r["tokens_per_s"] for r in rs] for arm, rs in results.items()},
                   "trainer_vs_train_student": ratio})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
