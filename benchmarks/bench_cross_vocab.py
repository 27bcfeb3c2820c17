"""A teacher with a vocabulary of current checkpoints (128,256 ids, Llama-3's) on a tokenizer of its own: the
whole-process mixed `logitcache dump` against the same teacher's bare forward over its own tokenization of
the same chunks. Prints a table and one JSON line; the goal is ratio = bare forward seconds / dump seconds
>= 0.8 (the dump's alignment, self-check, id map, tokenizer checks, softmax and writing cost at most a
quarter of the teacher's forward).

  python benchmarks/bench_cross_vocab.py [--chunks 256] [--repeats 3] [--logit-budget-mb 2048]

The data is the demo corpus prepared at vocabulary 8000 (bench_cross_dump.py's). The teacher's tokenizer is
a byte-level BPE trained on every other training document, with Llama-3's specials and template, padded
to 128,256 ids with merges of existing tokens (so its tokenizer.json, id map and identity are of that size).
The teachers are Llama layers under that vocabulary, one per --shapes entry HIDDENxLAYERS: the first (512x4:
hidden 512, 4 layers, 8 heads, MLP 1536) is the measured one, a width at which the 128k head is of the
size it has next to real checkpoints' layers; 64x2 (llama-tiny's layers) is reported beside it, where the
head is a matmul of width 64 and the per-position softmax over 128k ids is as large as the forward.
Both sides run as subprocesses on the same machine, interleaved: the dump timed from start to exit, the bare
forward timed over its forward passes and head alone (batches of --batch-size chunks, no softmax). The
dump's --logit-budget-mb (2048) lets its passes hold those 16-row batches at 128,256 teacher ids.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


def big_tokenizer(raw: Path, size: int, trained: int = 16000):
    """A Llama-3-style byte-level BPE of exactly `size` ids: `trained` ids learned from the text, the rest
    merges of two existing tokens (valid merges that rarely fire)."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from logitcache.prepare import find_raw_files, raw_documents, read_text

    docs = []
    for (source, split), paths in sorted(find_raw_files(raw).items()):
        if split == "train":
            docs += [d for p in paths for d in raw_documents(source, read_text(p)[0])]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator((line for d in docs[::2] for line in d.splitlines()), trainers.BpeTrainer(
        vocab_size=trained, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    spec = json.loads(tokenizer.to_str())
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    tokens = [t for t in vocab if t not in SPECIALS]
    rng = random.Random(0)
    while len(vocab) < size:
        a, b = rng.choice(tokens), rng.choice(tokens)
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append([a, b])
            tokens.append(a + b)
    spec["model"]["ignore_merges"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{SPECIALS[0]} $A",
                                                             special_tokens=[(SPECIALS[0], 0)])
    assert tokenizer.get_vocab_size(with_added_tokens=True) == size
    return tokenizer


def shape_preset(shape: str):
    """HIDDENxLAYERS -> a Llama preset: 64x2 is llama-tiny's; others heads of 64 and an MLP of 3x hidden."""
    from logitcache.teachers.presets import ModelPreset, get_preset

    hidden, layers = (int(x) for x in shape.split("x"))
    return get_preset("llama-tiny") if (hidden, layers) == (64, 2) else ModelPreset("llama", layers, hidden,
                                                                                      max(1, hidden // 64), 3 * hidden)


def teacher_folder(work: Path, raw: Path, size: int, shape: str) -> Path:
    """A Llama teacher of `shape` (shape_preset) under the size-id tokenizer."""
    from logitcache.teachers.models import build_model

    folder = work / f"teacher-{size}-{shape}"
    if not (folder / "config.json").is_file():
        tokenizer_file = work / f"tokenizer-{size}.json"
        if not tokenizer_file.is_file():
            big_tokenizer(raw, size).save(str(tokenizer_file))
        model = build_model(shape_preset(shape), size, seed=0, specials={"bos": 0, "eos": 1, "pad": None})
        model.save_pretrained(folder)
        (folder / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
        (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1]}))
    return folder


BARE = """
import json, sys, time
import numpy as np, torch
from logitcache.runtime.process import tune_process
tune_process()
from logitcache.data.prepared import load_data
from logitcache.teachers.models import load_model
from tokenizers import Tokenizer
data, folder, chunks, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = load_data(data).store
text, ends = store.split_text("train")
seq = store.split("train").shape[1]
tokenizer = Tokenizer.from_file(folder + "/tokenizer.json")
model = load_model(folder)
texts = []
for row in range(chunks):  # the dump's first chunks (--row-selection first), each as the teacher reads it
    first = row * seq
    start = int(ends[first - 1]) if first else 0
    texts.append(bytes(text[start:int(ends[first + seq - 1])]).decode("utf-8", "ignore"))
ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=True)]
t0 = time.perf_counter()
with torch.no_grad():
    for b in range(0, chunks, batch):
        part = ids[b:b + batch]
        length = max(map(len, part))
        x = torch.zeros(len(part), length, dtype=torch.long)
        mask = torch.zeros(len(part), length, dtype=torch.long)
        for r, p in enumerate(part):
            x[r, :len(p)] = torch.tensor(p)
            mask[r, :len(p)] = 1
        model(input_ids=x, attention_mask=mask).logits
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": sum(map(len, ids))}))
"""


def bare_forward(data: Path, folder: Path, chunks: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", BARE, str(data), str(folder), str(chunks), str(batch)], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from bench_cross_dump import prepared, timed_dump

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=ROOT / "work" / "demo" / "raw")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "bench_cross")
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--teacher-vocab", type=int, default=128256)
    parser.add_argument("--shapes", default="512x4,64x2", help="teachers HIDDENxLAYERS; the first is the goal's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logit-budget-mb", type=int, default=2048,
                        help="the dump's; 2048: its passes hold the bare forward's 16 rows at 128,256 teacher ids")
    args = parser.parse_args()
    if not args.raw.is_dir():
        from logitcache.data.corpus import build_demo_corpus

        build_demo_corpus(args.raw)
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepared(args.raw, args.work, 8000)
    from logitcache import open_cache

    results = []
    print(f"{'teacher':10}{'':24}{'median s':>10}  runs")
    for shape in args.shapes.split(","):
        folder = teacher_folder(args.work, args.raw, args.teacher_vocab, shape)
        bare, dumps = [], []
        for _ in range(args.repeats):  # interleaved, so a change in the machine's load reaches both
            bare.append(bare_forward(data, folder, args.chunks, args.batch_size)["seconds"])
            dumps.append(timed_dump(data, folder, args.work / "vocab.zarr", args.chunks, "--row-selection", "first",
                                        "--batch-size", str(args.batch_size), "--logit-budget-mb",
                                    str(args.logit_budget_mb)))
        coverage = open_cache(args.work / "vocab.zarr").attrs["coverage"][0]
        bare_s, dump_s = statistics.median(bare), statistics.median(dumps)
        print(f"{shape:10}{'bare teacher forward':24}{bare_s:>10.2f}  {', '.join(f'{s:.2f}' for s in bare)}")
        print(f"{shape:10}{'mixed dump (process)':24}{dump_s:>10.2f}  {', '.join(f'{s:.2f}' for s in dumps)}")
        print(f"{shape:10}ratio bare/dump {bare_s / dump_s:.3f}; positions aligned {coverage['positions']:.3f}, "
              f"self-check {coverage['self_check']['violations']}/{coverage['self_check']['checked']}")
        results.append({"shape": shape, "bare_forward_s": round(bare_s, 2), "dump_s": round(dump_s, 2),
                        "ratio": round(bare_s / dump_s, 3)})
    print(json.dumps({"bench": "cross_vocab", "chunks": args.chunks, "teacher_vocab": args.teacher_vocab,
                      "batch_size": args.batch_size, "logit_budget_mb": args.logit_budget_mb, "ratio": results[0]["ratio"], "goal": 0.8,
                      "met": results[0]["ratio"] >= 0.8, "teachers": results,
                      "positions_aligned": round(coverage["positions"], 4)}))


if __name__ == "__main__":
    main()
