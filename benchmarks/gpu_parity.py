"""CUDA parity for the paths the CPU tests cannot reach (run by gpu_check.sh on a GPU box):

1. the fused head loss on CUDA (its 8M-value sub-slices, `torch.softmax(out=)` written over its own input,
   the gradient written over the chunk's logits) against the autograd references on materialised logits
   on the same GPU, every target kind, T = 1 / 2 / 6 and a soft cap: loss and gradients within 1e-5;
2. the mixed-tokenizer dump (the fast head on the aligned rows, its in-place softmax, the id map) on CUDA
   against the same dump on CPU, fp32: probabilities within 1e-4, the same ids where they are not tied.

Prints a table, then one JSON line. Exit 1 when a check fails.
    python benchmarks/gpu_parity.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def fused_head_cases(device: str = "cuda"):
    """[(name, worst relative error of the loss, its CE and the gradients)] of the fused head loss on `device`
    against the reference (tests/test_fused_head.py's `parity_errors`)."""
    from logitcache.training.losses import linear
    from test_fused_head import V, parity_errors, targets_of

    linear.SUB_SLICE_VALUES[device] = 3 * V  # 3-row sub-slices: the loop crosses chunk and sub-slice ends
    results = []
    for kind, tail in (("topk", "bucket"), ("mass", "renormalize"), ("sample", "bucket"), ("sample", "renormalize")):
        for temperature, softcap in ((1.0, None), (2.0, None), (6.0, None), (2.0, 3.0)):
            errors = parity_errors(targets_of(kind), kind, tail, 0.5, temperature, softcap=softcap, device=device)
            worst = max(errors[k] for k in ("loss", "ce", "hidden", "weight", "bias"))
            results.append((f"fused {kind}/{tail} T={temperature:g}" + (f" cap={softcap:g}" if softcap else ""), worst))
    return results


def mixed_dump_case(out: Path, device: str = "cuda"):
    """(max |p_cuda - p_cpu|, share of positions whose ids differ beyond ties) of a mixed-tokenizer dump."""
    import numpy as np

    from conftest import dump_config
    from logitcache import open_cache
    from logitcache.dump import dump
    from logitcache.prepare import PrepareConfig, prepare
    from test_cross_tokenizer import odd_corpus, teacher_folder, teacher_metaspace

    data = out / "data"
    prepare(PrepareConfig(data=odd_corpus(out / "raw"), out=data, vocab_size=300, seq_len=32))
    teacher = teacher_folder(out, "llama-metaspace", teacher_metaspace(), "llama", 2)
    caches = {}
    for name, on in (("cpu", "cpu"), ("device", device)):
        caches[name] = out / f"mixed-{name}.zarr"
        dump(dump_config(data, [teacher], caches[name], combine="mean-probs", max_chunks=48, min_coverage=0.2,
                         device=on, precision="fp32", prob_dtype="float32"))
    a, b = (open_cache(caches[d]).read(0, 48) for d in ("cpu", "device"))
    same_ids = (a.ids == b.ids) | (np.abs(a.probs - b.probs) < 1e-5)  # a swap of tied entries is not a difference
    return float(np.abs(np.sort(a.probs, -1) - np.sort(b.probs, -1)).max()), float(1.0 - same_ids.all(-1).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--device", default="cuda", help="cpu runs the same script against itself (a dry run)")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"check": "gpu_parity", "ok": False, "why": "no CUDA device"}))
        return 1
    out = args.out or Path(tempfile.mkdtemp())
    rows = [(name, err, err < 1e-5) for name, err in fused_head_cases(args.device)]
    diff, id_share = mixed_dump_case(out, args.device)
    rows.append((f"mixed dump {args.device} vs cpu: max |dp|", diff, diff < 1e-4))
    rows.append((f"mixed dump {args.device} vs cpu: positions with other ids", id_share, id_share < 0.01))
    print(f"{'check':<52} {'value':>10}  ok")
    for name, value, ok in rows:
        print(f"{name:<52} {value:>10.3g}  {ok}")
    ok = all(r[2] for r in rows)
    worst_fused = max(r[1] for r in rows[:-2])
    print(json.dumps({"check": "gpu_parity", "device": args.device, "ok": ok, "worst_fused_rel": worst_fused,
                      "mixed_max_dp": diff, "mixed_other_ids": id_share}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
