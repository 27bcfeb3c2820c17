"""Keep big (B, T, V) tensors on the heap while torch works.

glibc serves buffers above its mmap threshold with fresh mmaps and returns them on free, so every
training or dump step page-faults its vocabulary-sized logits back in (softmax over 16,000 ids
ran ~3x slower here). Raising the mmap and trim thresholds fixes that, but the same settings make
the tokenizers library (Rust, many threads) ~50x slower, so they hold only inside this context.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT = 128 * 1024
_lock = threading.Lock()
_depth = 0


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def large_tensor_heap():
    global _depth
    libc = _libc()
    with _lock:
        _depth += 1
        if libc is not None and _depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 32)
            libc.mallopt(_M_TRIM_THRESHOLD, 1 << 36)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if libc is not None and _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT)
                libc.malloc_trim(0)
