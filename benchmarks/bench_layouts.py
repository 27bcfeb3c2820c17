"""Other layouts of the same top-k targets against the store's, on real teacher blocks, in one run.

    python benchmarks/bench_layouts.py --data work/demo/data --teacher work/demo/teachers/llama \
        --teacher work/demo/teachers/gpt2 [--k 32] [--repeats 3]

The store keeps each position's ids sorted ascending as gaps (store/ids.py) and the probability codes in
that id order, position after position; ids are byte-shuffled then zstd-7 (blosc, one block per chunk),
codes plain zstd-8. Each row here is one other arrangement of the same sqrt-u7 codes and ids, compressed
by the same two codecs (and zstd-5 for the codes), one 256-row block per chunk as the dump writes them:

- slot-major: every position's first entry, then every second entry, ... (zarr's transpose codec would
  store this and plain zarr would still read it);
- probability order: ids as ranked by the teacher (no sort), codes then decreasing per position;
- (code, id) order: ids grouped by equal code, ascending within a group, stored as gaps inside a group;
- code residuals: each code minus the median code of its id in the first block (a table a reader adds back).

With `zstandard` installed, also the codes under zstd's own match-finder settings (strategy, min match,
search depth) around level 8's. Bytes/token are of topk_ids + topk_probs as stored; speed is tokens per
CPU-second of one thread (medians of --repeats). Prints the table, then one JSON line.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from common import emit_json, median, print_table

STRATEGIES = {5: "lazy2", 6: "btlazy2", 7: "btopt"}  # zstd's; level 8 is lazy2, min match 5, search log 4
LAYOUTS = ("store (id-sorted gaps, codes in id order)", "slot-major", "probability order", "(code, id) order",
           "code residuals")


def blocks_at(data: Path, teachers: list[Path], temperature: float, k: int):
    from bench_dump import writer_blocks

    return writer_blocks(data, teachers, 0, temperature, k)


def arranged(layout: str, ids: np.ndarray, probs: np.ndarray, vocab_size: int, medians: np.ndarray):
    """(ids array, codes array) of one block (n, T, K) in `layout`, as the arrays a store would hold."""
    from logitcache.store import encode_ids, prob_code

    code = prob_code("sqrt-u7")
    if layout == "probability order":
        return ids.astype(np.uint16), code.encode(probs)
    if layout == "(code, id) order":
        codes = code.encode(probs).astype(np.int64)
        order = np.argsort((127 - codes) * 65536 + ids, axis=-1, kind="stable")  # code decreasing, then id
        sorted_ids = np.take_along_axis(ids, order, -1).astype(np.int64)
        sorted_codes = np.take_along_axis(codes, order, -1)
        new_group = np.ones(sorted_codes.shape, dtype=bool)
        new_group[..., 1:] = sorted_codes[..., 1:] != sorted_codes[..., :-1]
        gaps = np.where(new_group, sorted_ids, np.diff(sorted_ids, axis=-1, prepend=0))
        return gaps.astype(np.uint16), sorted_codes.astype(np.uint8)
    gaps, order = encode_ids(ids, vocab_size)
    codes = code.encode(np.take_along_axis(probs, order, axis=-1))
    if layout == "slot-major":
        return np.ascontiguousarray(gaps.transpose(2, 0, 1)), np.ascontiguousarray(codes.transpose(2, 0, 1))
    if layout == "code residuals":
        sorted_ids = np.cumsum(gaps.astype(np.int64), axis=-1)
        return gaps, ((codes.astype(np.int64) - medians[sorted_ids]) % 128).astype(np.uint8)
    return gaps, codes


def id_medians(ids: np.ndarray, probs: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V,) the median sqrt-u7 code of each id over one block (the overall median for ids it lacks)."""
    from logitcache.store import prob_code

    codes = prob_code("sqrt-u7").encode(probs).reshape(-1).astype(np.int64)
    flat = ids.reshape(-1).astype(np.int64)
    out = np.full(vocab_size, int(np.median(codes)), dtype=np.int64)
    order = np.argsort(flat, kind="stable")
    values, starts = np.unique(flat[order], return_index=True)
    for value, group in zip(values, np.split(codes[order], starts[1:])):
        out[value] = int(np.median(group))
    return out


def order0_bytes_per_token(arrays, n_tokens: int) -> float:
    """The arrays' order-0 entropy (each value coded alone, by its frequency over all blocks) in bytes/token:
    what an entropy coder without context would take, against which the codecs' matches show."""
    _, counts = np.unique(np.concatenate([a.reshape(-1) for a in arrays]), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) * counts.sum() / 8 / n_tokens


def timed(compress, arrays, n_tokens: int, repeats: int) -> tuple[float, float]:
    """(bytes/token, tokens per CPU-second of this thread) of `compress` over every block's array."""
    times, size = [], 0
    for _ in range(repeats):
        t0 = time.thread_time()
        size = sum(len(compress(np.ascontiguousarray(a))) for a in arrays)
        times.append(time.thread_time() - t0)
    return size / n_tokens, n_tokens / median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, action="append", required=True)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from numcodecs import Blosc, Zstd, blosc

    from logitcache.data.prepared import load_data

    blosc.set_nthreads(1)  # one thread: tokens per CPU-second compare like for like
    vocab_size = load_data(args.data).vocab_size
    ids_codec = lambda a: Blosc("zstd", 4, Blosc.SHUFFLE, blocksize=a.nbytes).encode(a)  # the store's ids
    codes_codecs = {"zstd-8": Zstd(level=8).encode, "zstd-5": Zstd(level=5).encode}
    rows, summary, entropy = [], {}, {}
    for temperature in (2.0, 1.0):
        blocks = blocks_at(args.data, args.teacher, temperature, args.k)
        n_tokens = sum(ids.shape[0] * ids.shape[1] for _, ids, _ in blocks)
        medians = id_medians(blocks[0][1], blocks[0][2], vocab_size)
        for layout in LAYOUTS:
            pairs = [arranged(layout, ids, probs, vocab_size, medians) for _, ids, probs in blocks]
            if layout == LAYOUTS[0]:
                entropy[f"T{temperature:g}"] = {name: order0_bytes_per_token([p[i] for p in pairs], n_tokens)
                                                for i, name in enumerate(("ids", "codes"))}
            id_bytes, id_speed = timed(ids_codec, [p[0] for p in pairs], n_tokens, args.repeats)
            for label, codec in codes_codecs.items():
                code_bytes, code_speed = timed(codec, [p[1] for p in pairs], n_tokens, args.repeats)
                rows.append([f"{temperature:g}", layout, f"ids blosc-chunk-4, codes {label}", id_bytes, code_bytes,
                             id_bytes + code_bytes, 1 / (1 / id_speed + 1 / code_speed)])
                summary[f"T{temperature:g} {layout} codes {label}"] = {"ids_bytes_per_token": id_bytes,
                                                                      "codes_bytes_per_token": code_bytes,
                                                                      "bytes_per_token": id_bytes + code_bytes}
        try:
            import zstandard
        except ImportError:
            zstandard = None
        if zstandard is not None:  # the store's codes under other match-finder settings (a standard zstd frame)
            codes = [arranged(LAYOUTS[0], ids, probs, vocab_size, medians)[1] for _, ids, probs in blocks]
            for strategy, min_match, search_log in itertools.product((5, 6, 7), (4, 5), (3, 4)):
                params = zstandard.ZstdCompressionParameters(window_log=22, chain_log=20, hash_log=20, search_log=search_log,
                                                             min_match=min_match, target_length=16, strategy=strategy)
                compressor = zstandard.ZstdCompressor(compression_params=params)
                code_bytes, code_speed = timed(lambda a: compressor.compress(a.tobytes()), codes, n_tokens, args.repeats)
                rows.append([f"{temperature:g}", LAYOUTS[0], f"codes zstd {STRATEGIES[strategy]}, min match {min_match}, "
                             f"search log {search_log}", "", code_bytes, "", code_speed])
    print_table(f"top-{args.k} sqrt-u7 targets of {', '.join(t.name for t in args.teacher)} (dev split, 256-row blocks): "
                f"bytes/token as stored, tokens per CPU-second of one thread (ids and codes together; medians of "
                f"{args.repeats})", ["T", "layout", "codecs", "ids B/token", "codes B/token", "B/token",
                                     "tokens/CPU-s"], rows)
    print_table("the store's arrays: order-0 entropy (bytes/token, no context) against the codecs' bytes above",
                ["T", "ids", "codes"], [[t, e["ids"], e["codes"]] for t, e in entropy.items()])
    emit_json({"bench": "layouts", "k": args.k, "layouts": summary, "order0_entropy": entropy})


if __name__ == "__main__":
    main()
