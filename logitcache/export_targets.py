"""`export-targets`: a cache's teacher targets as another tool's KD dataset (docs/guide.md, "Export to other KD
formats").

`--format axolotl` writes a Hugging Face `datasets` folder (save_to_disk) with the columns Axolotl's KD
integration trains on after its dataset step (axolotl-ai-cloud/axolotl, src/axolotl/integrations/kd: README
"Target alignment" at 139786bf, kernels/liger.py at 00bfeb42, collator.py at 0399aefc):

    input_ids        (T,)    the chunk
    labels           (T,)    the chunk (the loss shifts them for CE)
    attention_mask   (T,)    ones
    target_token_ids (T, K)  the kept ids, by decreasing probability; row j: the distribution over input_ids[j + 1]
    target_logprobs  (T, K)  log of the kept probabilities renormalised over the kept ids (Axolotl's offline
                             dataset step renormalises them too), at the cache's temperature; -1e9 where masked
    target_mask      (T, K)  1 where a slot holds a target: 0 at positions with teacher_count 0 and slots whose
                             probability is 0

The cache's row T-1 holds a real target (the teacher's prediction of the token after the chunk); Axolotl's
producers pad that row, but its loss reads only `target_mask`, so the row stays in.

What the format cannot carry: the tail bucket (its KL is over the kept ids renormalised: train-student's
`--tail renormalize`), sampled targets (no importance weights) and mass targets (its normalize_topk
renormalises the student over all K slots, padding included), which are refused; teacher_count becomes
the mask. The temperature is not a column: the rows are at the cache's temperature, and Axolotl's
config must say so (`kd_temperature` and the dataset's `temperature`, written to logitcache_export.json).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .config import ExportTargetsConfig  # noqa: F401  (re-exported)
from .errors import LogitcacheError
from .files import atomic_dir, check_output
from .progress import NULL_PROGRESS, ProgressHook
from .store import CacheReader
from .targets import Targets

log = logging.getLogger(__name__)

MASKED_LOGPROB = -1e9  # Axolotl's collator pads target_logprobs with this, mask 0
AXOLOTL_SOURCE = "axolotl-ai-cloud/axolotl src/axolotl/integrations/kd (README 139786bf, kernels/liger.py 00bfeb42)"


def axolotl_rows(targets: Targets) -> dict[str, np.ndarray]:
    """n decoded rows (by decreasing probability) -> Axolotl's columns, each (n, T) or (n, T, K)."""
    probs = targets.probs  # (n, T, K)
    mask = probs > 0
    if targets.teacher_count is not None:
        mask &= (targets.teacher_count > 0)[..., None]
    kept = np.where(mask, probs, 0).sum(-1, keepdims=True)  # (n, T, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logprobs = np.where(mask, np.log(np.where(mask, probs, 1) / np.where(kept > 0, kept, 1)), MASKED_LOGPROB)
    tokens = targets.tokens
    return {"input_ids": tokens, "labels": tokens, "attention_mask": np.ones(tokens.shape, np.int8),
            "target_token_ids": targets.ids.astype(np.int32), "target_logprobs": logprobs.astype(np.float32),
            "target_mask": mask.astype(np.int8)}


def export_targets(config: ExportTargetsConfig, overwrite: bool = False, progress: ProgressHook = NULL_PROGRESS
                   ) -> dict:
    """Write the cache's targets in `config.format` to `config.out` (refused if it holds something, unless
    `overwrite`: then replaced once the new folder is complete). Returns the summary also written to
    OUT/logitcache_export.json."""
    import datasets

    out = Path(config.out)
    check_output(out, overwrite=overwrite)
    reader = CacheReader(config.cache, require_complete=True)
    kind = reader.attrs.get("targets", "topk")
    if kind != "topk" or reader.layout.ragged or reader.layout.with_weights:
        raise LogitcacheError(f"cache {reader.store.path} holds {kind} targets; Axolotl's KD format carries top-k "
                              "targets only (no importance weights; its normalize_topk would count a mass cache's "
                              "padding slots in the student's normalisation)")
    n_rows = min(len(reader), config.max_rows) if config.max_rows else len(reader)
    t, k = reader.layout.seq_len, reader.layout.k
    r = reader.layout.block_rows
    counts = {"rows": n_rows, "positions_masked": 0, "positions_with_a_zero_slot": 0}

    def rows():
        progress.start("export", (n_rows + r - 1) // r)
        for block in range((n_rows + r - 1) // r):
            start, _ = reader.layout.block_range(block)
            decoded = reader.read_block(block).rows(slice(0, n_rows - start))  # checksum-verified
            columns = axolotl_rows(decoded)
            position_masked = columns["target_mask"].sum(-1) == 0  # (n, T)
            counts["positions_masked"] += int(position_masked.sum())
            counts["positions_with_a_zero_slot"] += int(((decoded.probs <= 0).any(-1) & ~position_masked).sum())
            for i in range(decoded.n_rows):
                yield {name: column[i] for name, column in columns.items()}
            progress.update(1)
        progress.finish()

    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int64"), length=t),
        "labels": datasets.Sequence(datasets.Value("int64"), length=t),
        "attention_mask": datasets.Sequence(datasets.Value("int8"), length=t),
        "target_token_ids": datasets.Sequence(datasets.Sequence(datasets.Value("int32"), length=k), length=t),
        "target_logprobs": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=k), length=t),
        "target_mask": datasets.Sequence(datasets.Sequence(datasets.Value("int8"), length=k), length=t),
    })
    temperature = float(reader.attrs["temperature"])
    summary = {"format": config.format, "cache": reader.store.path, "source": AXOLOTL_SOURCE, "seq_len": t, "k": k,
               "temperature": temperature,
               "axolotl_config": {"kd_trainer": True, "kd_temperature": temperature, "kd_normalize_topk": True,
                                  "datasets": [{"path": str(out), "temperature": temperature}]}}
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".arrow", dir=out.parent))
    try:
        with atomic_dir(out, suffix=".exporting") as tmp:
            dataset = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(build))
            dataset.save_to_disk(str(tmp))  # load_from_disk(OUT) reads it
            summary |= counts
            (tmp / "logitcache_export.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    if counts["positions_with_a_zero_slot"]:
        log.warning("%d positions keep an id whose probability code is 0: masked there, but Axolotl's normalize_topk "
                    "still counts its student probability in the normalisation", counts["positions_with_a_zero_slot"])
    return summary
