"""Process settings made before torch is imported (`tune_process()`): the heap, and OpenMP's idle spin.

Heap: keep big (B, T, V) tensors on the heap while torch works.

glibc serves buffers above its mmap threshold with fresh mmaps and returns them on free, so every
training or dump step page-faults its vocabulary-sized logits back in. Raising the mmap and trim
thresholds before torch is imported keeps them on the heap. mallopt takes a C int, so 2^31 - 1 is the
highest threshold it can set; an earlier version passed 2^32 and 2^36, which ctypes masked to 0, so both
thresholds were in fact 0. Measured here (demo teachers, batch 16 x 128, medians of 2 runs):
forward + top-k 279 ms untuned, 236 ms with the masked zeros, 205 ms with 2^31 - 1; a llama training step
335 / 288 / 261 ms; the dump's writer threads 1.2M / 0.95M / 1.3M tokens/s. The masked zeros made the
tokenizers library (Rust, many threads) ~90x slower; with 2^31 - 1 BPE training and encoding take
1.1x their untuned time here (one run), and `default_heap()` still restores glibc's defaults around
tokenizer work.

OpenMP: after each parallel region, torch's libgomp workers spin for GOMP_SPINCOUNT iterations (300,000
by default, ~10 ms with `pause`) before they sleep, holding a core the dump's own threads (top-k
selection, the writer) need between the teachers' ops. 30,000 (~1 ms) still covers the gaps between the
ops of a forward: the tiny teachers' whole-process dump went from 11.9 to 11.1 s, the bare forward
unchanged (8.5 s); OMP_WAIT_POLICY=PASSIVE (no spin) made the forward itself 1.3x slower. A value the
user set is kept.

The CLI package, the benchmarks and the tests call `tune_process()` before importing torch.
"""
from __future__ import annotations

import contextlib
import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT = 128 * 1024
_HIGHEST = 2**31 - 1  # mallopt's value is a C int: anything larger is masked by ctypes, not clamped
_state = {"tuned": False}


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _libc()
    if libc is None:
        return False
    assert 0 <= mmap_threshold <= _HIGHEST and 0 <= trim_threshold <= _HIGHEST, "mallopt takes a C int"
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))


GOMP_SPINCOUNT = "30000"


def tune_process() -> None:
    """Call once at process start, before `import torch`: the heap thresholds and OpenMP's idle spin."""
    tune_heap()
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)  # read when libgomp loads (with torch)


def tune_heap() -> None:
    """Call once at process start, before `import torch` (what MALLOC_MMAP_THRESHOLD_ would do)."""
    _state["tuned"] = _set(_HIGHEST, _HIGHEST)


@contextlib.contextmanager
def default_heap():
    """glibc's default thresholds for the duration (tokenizer training and encoding)."""
    if not _state["tuned"]:
        yield
        return
    _set(_DEFAULT, _DEFAULT)
    _libc().malloc_trim(0)
    try:
        yield
    finally:
        _set(_HIGHEST, _HIGHEST)
