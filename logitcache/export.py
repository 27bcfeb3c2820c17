"""`export`: a trained model folder as the BabyLM evaluation pipelines and the Hub expect it.

2024 pipeline: lm-eval `--model hf --model_args pretrained=DST,backend=causal`. 2025 pipeline
(transformers 4.51): AutoModelForCausalLM and a fast tokenizer with offsets, where the first word of a
sentence is scored only after the token the tokenizer prepends, so the exported tokenizer prepends the
data's document prefix (data.document_prefix: the BOS that starts every training document), the token
`eval` scores BLiMP after. config.json carries both transformers 5.x's keys and the 4.x keys they
replaced, so both read the same model. The folder holds safetensors weights, config.json,
generation_config.json, the fast tokenizer and a model card; no optimizer state and nothing that
needs pickle; files 0644, the folder 0755. Written to a temp folder, then renamed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from .config import ExportConfig  # noqa: F401  (re-exported)
from .errors import LogitcacheError
from .files import atomic_dir, check_output

log = logging.getLogger(__name__)

COPIED_FILES = ("model.safetensors", "generation_config.json")  # config.json: write_config


def bos_tokenizer(src: Path):
    """The source's tokenizer with a template that prepends the data's document prefix (kept as is when it
    already does): the BOS that starts every training document, or the EOS that ends the one before."""
    from tokenizers import processors

    from .data.prepared import document_prefix
    from .data.tokenizer import load_tokenizer, special_ids

    tokenizer = load_tokenizer(src / "tokenizer.json")
    config = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
    prefix_id = document_prefix(tokenizer, special_ids(tokenizer, src))
    if prefix_id is None:
        raise LogitcacheError(f"{src}: the tokenizer has no BOS (nor EOS) token to prepend")
    bos = tokenizer.id_to_token(prefix_id)
    if tokenizer.encode("a").ids[:1] != [prefix_id]:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, prefix_id)])
    return tokenizer, bos, config


# transformers 5.x key -> the 4.x key it replaced (4.x ignores the 5.x names and falls back to its defaults)
_DTYPE_KEYS = {"dtype": "torch_dtype"}


def portable_config(config: dict) -> dict:
    """config.json as both transformers 4.4x-4.5x and 5.x read it to the same model: 5.x's `dtype` and
    `rope_parameters`, plus the 4.x `torch_dtype`, `rope_theta` and `rope_scaling` with the same values."""
    out = dict(config)
    for new, old in _DTYPE_KEYS.items():
        if out.get(new) is not None:
            out[old] = out[new]
    rope = out.get("rope_parameters")
    if rope:
        if not isinstance(rope, dict) or "rope_theta" not in rope:  # per-layer-type parameters (Gemma-3 style)
            raise LogitcacheError(f"export: rope_parameters {rope!r} have no transformers 4.x form that logitcache "
                                  "writes (one rope_theta for every layer)")
        out["rope_theta"] = rope["rope_theta"]
        if "partial_rotary_factor" in rope:
            out["partial_rotary_factor"] = rope["partial_rotary_factor"]
        scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
        out["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    return out


def write_config(src: Path, dst: Path) -> None:
    """dst/config.json: src's config with the transformers 4.x keys added; refused unless this transformers
    reads it to exactly the source's config."""
    from transformers import AutoConfig

    (dst / "config.json").write_text(json.dumps(portable_config(json.loads((src / "config.json").read_text())),
                                                indent=2, sort_keys=True) + "\n")
    ignore = ("_name_or_path", "transformers_version")
    read = [{k: v for k, v in AutoConfig.from_pretrained(str(d), local_files_only=True).to_dict().items()
             if k not in ignore} for d in (src, dst)]
    if read[0] != read[1]:
        changed = sorted(k for k in set(read[0]) | set(read[1]) if read[0].get(k) != read[1].get(k))
        raise LogitcacheError(f"export: the written config.json reads differently from {src}'s ({', '.join(changed)})")


def readable_by_all(folder: Path) -> None:
    """Files 0644 and folders 0755, whatever the source's modes and the umask (safetensors writes 0600)."""
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def model_card(src: Path, prefix: str) -> str:
    """README.md: what the model is, how it was trained (the resolved config), the token its tokenizer
    prepends (`prefix`) and its validation results."""
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
             f"# prepends {prefix}", "```", "",
             "BabyLM evaluation: `lm_eval --model hf --model_args pretrained=PATH,backend=causal ...` (2024), or the "
             "2025 pipeline's AutoModelForCausalLM path (transformers 4.51 and 5.x read config.json alike).", "",
             f"The tokenizer prepends `{prefix}`, the token in front of every document the model was trained on "
             "(`logitcache prepare` starts each document with the tokenizer's BOS: a line of a BabyLM file, a "
             "blank-line-separated block of verse, a text file or a JSONL/Parquet row; tokenizers without a BOS "
             "template end each document with EOS instead). So a sentence scored from this tokenizer's ids, as "
             "the BabyLM pipeline's `sentence_zero_shot` does and `logitcache eval` does for BLiMP, has its first "
             "word conditioned on a token seen in training.", ""]
    if stage == "train-student":
        lines += [f"Distilled from an offline cache of teacher targets with alpha = {config.get('alpha')} (CE weight) "
                  f"and temperature {config.get('temperature')}; alpha = 1 means no distillation.", ""]
    if best is not None:
        lines += ["## Results", "", f"Best validation cross-entropy {best['val_ce']:.4f} nats/token at step {best['step']}.", ""]
    lines += ["## Training configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def export(config: ExportConfig, overwrite: bool = False) -> Path:
    """Write `config.src` as a Hugging Face folder at `config.dst`; a `dst` holding something is refused
    unless `overwrite`, and then replaced only once the new folder is complete."""
    src, dst = Path(config.src), Path(config.dst)
    check_output(dst, overwrite=overwrite)
    if not (src / "COMPLETE").is_file():
        raise LogitcacheError(f"{src} is not a finished training run (no COMPLETE marker)")
    missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json") if not (src / name).is_file()]
    if missing:
        raise LogitcacheError(f"{src} has no {', '.join(missing)}")
    with atomic_dir(dst, suffix=".exporting") as tmp:
        for name in COPIED_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        write_config(src, tmp)
        tokenizer, bos, tok_config = bos_tokenizer(src)
        tokenizer.save(str(tmp / "tokenizer.json"))
        tok_config.update(tokenizer_class="PreTrainedTokenizerFast", bos_token=bos, add_bos_token=True,
                          model_input_names=["input_ids", "attention_mask"])
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(src, bos))
        readable_by_all(tmp)
    log.info("exported %s to %s", src, dst)
    return dst
