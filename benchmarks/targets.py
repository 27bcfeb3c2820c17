"""Real top-k targets of trained teachers for the size benchmarks, computed once and kept on disk.

    teacher_targets(data_dir, [teacher, ...], split="dev", temperature=2.0, k=128, chunks=0, cache_dir=...)

The ensemble (mean-logits, as `logitcache dump`) runs over the split's first `chunks` chunks (0: all) and
returns ids (N, T, K) int32 and probabilities (N, T, K) float32, decreasing; a smaller k is the first k
columns. The arrays are saved under `cache_dir` (default work/bench_targets, git-ignored), keyed by the
teachers' weight files, the data fingerprint and the settings, so a second benchmark run skips the teachers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / "work" / "bench_targets"


def _key(data_dir: Path, teacher_dirs: list[Path], split: str, temperature: float, k: int, chunks: int) -> str:
    """A name that changes when the teachers' weights, the data or a setting change."""
    from logitcache.data.prepared import load_data

    parts = {"fingerprint": load_data(data_dir).fingerprint, "split": split, "T": temperature, "k": k, "chunks": chunks,
             "teachers": [sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                 for p in Path(t).glob("*.safetensors")) for t in teacher_dirs]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_targets(data_dir: Path, teacher_dirs: list[Path], split: str = "dev", temperature: float = 2.0,
                    k: int = 128, chunks: int = 0, cache_dir: Path = DEFAULT_CACHE_DIR,
                    batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens (N, T) uint16/32, top-k ids (N, T, K) int32, probabilities (N, T, K) float32 (decreasing)."""
    import torch

    from logitcache.data.prepared import load_data
    from logitcache.teachers.ensemble import Ensemble, load_teachers

    path = Path(cache_dir) / f"{split}-T{temperature:g}-k{k}-{_key(data_dir, teacher_dirs, split, temperature, k, chunks)}.npz"
    if path.exists():
        saved = np.load(path)
        return saved["tokens"], saved["ids"], saved["probs"]
    data = load_data(data_dir)
    rows = data.store.split(split)
    rows = rows[:chunks] if chunks else rows[:]
    models, _ = load_teachers(teacher_dirs, torch.device("cpu"), data)
    ensemble = Ensemble(models, "mean-logits", temperature, torch.device("cpu"), vocab_size=data.vocab_size)
    ids = np.empty((*rows.shape, k), dtype=np.int32)  # (N, T, K)
    probs = np.empty((*rows.shape, k), dtype=np.float32)  # (N, T, K)
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            top_ids, top_probs = ensemble.topk(torch.from_numpy(rows[start:start + batch_size].astype(np.int64)), k)
            ids[start:start + batch_size] = top_ids.numpy()
            probs[start:start + batch_size] = top_probs.numpy()
    log.info("targets of %d chunks at T = %g in %.0f s", rows.shape[0], temperature, time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.npz")
    np.savez(partial, tokens=rows, ids=ids, probs=probs)
    partial.rename(path)
    return rows, ids, probs
