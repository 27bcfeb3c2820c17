"""`export`: a trained model folder as the BabyLM evaluation pipelines and the Hub expect it.

2024 pipeline: lm-eval `--model hf --model_args pretrained=DST,backend=causal`. 2025 pipeline:
AutoModelForCausalLM and a fast tokenizer with offsets, where the first word of a sentence is scored
only if the tokenizer prepends BOS, so the exported tokenizer prepends it. The folder holds
safetensors weights, config.json, generation_config.json, the fast tokenizer and a model card; no
optimizer state and nothing that needs pickle. Written to a temp folder, then renamed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from .configs import prepare_output
from .errors import LogitcacheError
from .stage_configs import ExportConfig  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json")


def bos_tokenizer(src: Path):
    """The source's tokenizer with a template that prepends BOS (kept as is when it already does)."""
    from tokenizers import processors

    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(src / "tokenizer.json")
    config = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
    bos = config.get("bos_token") or config.get("eos_token")
    bos_id = tokenizer.token_to_id(bos) if bos else None
    if bos_id is None:
        raise LogitcacheError(f"{src}: the tokenizer has no BOS (nor EOS) token to prepend")
    if tokenizer.encode("a").ids[:1] != [bos_id]:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    return tokenizer, bos, config


def model_card(src: Path) -> str:
    """README.md: what the model is, how it was trained (the resolved config) and its validation results."""
    config = json.loads((src / "logitcache_config.json").read_text()) if (src / "logitcache_config.json").is_file() else {}
    metrics = [json.loads(line) for line in (src / "metrics.jsonl").read_text().splitlines()] \
        if (src / "metrics.jsonl").is_file() else []
    vals = [m for m in metrics if "val_ce" in m]
    best = min(vals, key=lambda m: m["val_ce"]) if vals else None
    stage = config.get("stage", "training")
    lines = ["---", "library_name: transformers", "tags: [babylm, knowledge-distillation, logitcache]", "---", "",
             f"# {src.name}", "",
             f"A causal language model trained with logitcache ({stage}). Load it with plain transformers:", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)  "
             "# prepends BOS", "```", "",
             "BabyLM evaluation: `lm_eval --model hf --model_args pretrained=PATH,backend=causal ...` (2024), or the "
             "2025 pipeline's AutoModelForCausalLM path.", ""]
    if stage == "train-student":
        lines += [f"Distilled from an offline cache of teacher targets with alpha = {config.get('alpha')} (CE weight) "
                  f"and temperature {config.get('temperature')}; alpha = 1 means no distillation.", ""]
    if best is not None:
        lines += ["## Results", "", f"Best validation cross-entropy {best['val_ce']:.4f} nats/token at step {best['step']}.", ""]
    lines += ["## Training configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def export(config: ExportConfig, overwrite: bool = False) -> Path:
    src, dst = Path(config.src), Path(config.dst)
    if not (src / "COMPLETE").is_file():
        raise LogitcacheError(f"{src} is not a finished training run (no COMPLETE marker)")
    missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json") if not (src / name).is_file()]
    if missing:
        raise LogitcacheError(f"{src} has no {', '.join(missing)}")
    prepare_output(dst, overwrite=overwrite)
    tmp = dst.with_name(dst.name + ".exporting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    tokenizer, bos, tok_config = bos_tokenizer(src)
    tokenizer.save(str(tmp / "tokenizer.json"))
    tok_config.update(tokenizer_class="PreTrainedTokenizerFast", bos_token=bos, add_bos_token=True,
                      model_input_names=["input_ids", "attention_mask"])
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (tmp / "README.md").write_text(model_card(src))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    log.info("exported %s to %s", src, dst)
    return dst
