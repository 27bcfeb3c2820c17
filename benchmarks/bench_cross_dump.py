"""Whole-process dump with one teacher on a tokenizer of its own against the same teacher on the data's
tokenizer: same architecture and size, same vocabulary size, same chunks. Prints one JSON line; the goal
is ratio = seconds(same tokenizer) / seconds(own tokenizer) >= 0.8.

  python benchmarks/bench_cross_dump.py [--raw RAW] [--work DIR] [--chunks 512] [--preset llama-small]

The data is the demo corpus prepared at vocabulary 8000 (`--raw`: its raw folder; default work/demo/raw,
else the corpus is built). The teacher's own tokenizer is a byte-level BPE of the same size trained on
every other training document, so it splits the text differently. Teachers are random-init (speed does
not depend on the weights); each dump is a `logitcache dump` subprocess, timed from start to exit.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepared(raw: Path, work: Path, vocab: int) -> Path:
    data = work / "data"
    if not (data / "tokens.zarr").is_dir():
        from logitcache.prepare import PrepareConfig, prepare

        prepare(PrepareConfig(data=raw, out=data, vocab_size=vocab, seq_len=128))
    return data


def teacher(work: Path, name: str, tokenizer, preset: str) -> Path:
    from logitcache.teachers.models import build_model, get_preset

    folder = work / name
    if not (folder / "config.json").is_file():
        model = build_model(get_preset(preset), tokenizer.get_vocab_size(with_added_tokens=True), seed=0)
        model.save_pretrained(folder)
        tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def own_tokenizer(raw: Path, vocab: int):
    """A byte-level BPE of the data's size on every other training document (the data's template)."""
    from logitcache.prepare import find_raw_files, raw_documents, read_text, with_bos_template
    from logitcache.data.tokenizer import train_tokenizer

    docs = []
    for (source, split), paths in sorted(find_raw_files(raw).items()):
        if split == "train":
            docs += [d for p in paths for d in raw_documents(source, read_text(p)[0])]
    return with_bos_template(train_tokenizer((line for d in docs[::2] for line in d.splitlines()), vocab))


def timed_dump(data: Path, folder: Path, out: Path, chunks: int, *extra: str) -> float:
    """Wall seconds of `logitcache dump` as a whole process (start-up included); `extra`: more options."""
    args = [sys.executable, "-m", "logitcache_cli", "dump", "--data", str(data), "--teacher", str(folder),
            "--out", str(out), "--overwrite", "--combine", "mean-probs", "--max-chunks", str(chunks),
            "--device", "cpu", "--min-coverage", "0", *extra]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=ROOT / "work" / "demo" / "raw")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "bench_cross")
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--preset", default="llama-small")
    args = parser.parse_args()
    if not args.raw.is_dir():
        from logitcache.data.corpus import build_demo_corpus

        build_demo_corpus(args.raw)
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepared(args.raw, args.work, args.vocab)
    from logitcache.data.tokenizer import load_tokenizer

    same = teacher(args.work, "teacher-same", load_tokenizer(data / "tokenizer.json"), args.preset)
    own = teacher(args.work, "teacher-own", own_tokenizer(args.raw, args.vocab), args.preset)
    seconds_same = timed_dump(data, same, args.work / "same.zarr", args.chunks)
    seconds_own = timed_dump(data, own, args.work / "own.zarr", args.chunks)
    from logitcache import open_cache

    coverage = open_cache(args.work / "own.zarr").attrs["coverage"][0]
    print(json.dumps({"bench": "cross_dump", "chunks": args.chunks, "preset": args.preset, "vocab": args.vocab,
                      "seconds_same_tokenizer": round(seconds_same, 2), "seconds_own_tokenizer": round(seconds_own, 2),
                      "ratio": round(seconds_same / seconds_own, 3), "positions_aligned": coverage["positions"],
                      "next_tokens_mapped": coverage["next_tokens_mapped"]}))


if __name__ == "__main__":
    main()
