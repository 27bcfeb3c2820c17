"""Helpers for the benchmark scripts: synthetic data dirs, interleaved repeats, medians, the table."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_data(out: Path, vocab_size: int, chunks: int, seq_len: int = 128, seed: int = 0) -> Path:
    """A prepared data dir with random tokens (throughput does not depend on the text)."""
    from logitcache.store import write_token_store
    from logitcache.data.prepared import fingerprint
    from logitcache.data.tokenizer import train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(vocab_size)]
    tokenizer = train_tokenizer((" ".join(words[i:i + 50]) for i in range(0, len(words), 50)), vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    from logitcache.files import sha256_file

    rng = np.random.default_rng(seed)
    v = tokenizer.get_vocab_size()
    splits = {s: rng.integers(3, v, size=(n, seq_len)).astype(np.uint16) for s, n in
              (("train", chunks), ("dev", 64), ("test", 64))}
    sha = sha256_file(out / "tokenizer.json")
    write_token_store(out / "tokens.zarr", splits, {"kind": "tokens", "seq_len": seq_len, "vocab_size": v, "sources": {},
                                                    "tokenizer_sha256": sha, "fingerprint": fingerprint(sha, splits)})
    return out


def median(values):
    return statistics.median(values)


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    widths = [max(len(str(c)), *(len(_fmt(r[i])) for r in rows)) for i, c in enumerate(columns)]
    print(title)
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(_fmt(v).ljust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def emit_json(payload: dict) -> None:
    print(json.dumps(payload))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    fork and exec, so a child would report its parent's peak when the parent was bigger."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_arms_interleaved(script: str, arms: list[str], args, work: Path) -> dict[str, list[dict]]:
    """Each arm in its own process (`script --arm ARM --work WORK` with the same options), the arms
    alternating over args.repeats rounds so machine noise hits every arm alike. {arm: [result, ...]}."""
    import subprocess

    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("arm", "work")]
    for _ in range(args.repeats):
        for arm in arms:
            proc = subprocess.run([sys.executable, script, *passthrough, "--arm", arm, "--work", str(work)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"arm {arm} failed:\n{proc.stderr[-3000:]}")
            results[arm].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def parse_or_run_arm(parser, run_arm):
    """Add the hidden --arm/--work options and --threads, parse; inside an arm's process run it, print its
    JSON result and return None; in the parent return the parsed options."""
    import argparse

    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.work, args)))
        return None
    return args
