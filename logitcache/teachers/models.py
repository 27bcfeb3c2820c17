"""Models built from presets (presets.py) as plain `transformers` classes; loading local HF folders."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel

from ..data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from ..errors import LogitcacheError
from .presets import ARCHS, PRESETS, ModelPreset, get_preset  # noqa: F401  (re-exported)

transformers.utils.logging.disable_progress_bar()  # progress bars belong to the CLI

def hf_config(preset: ModelPreset, vocab_size: int, specials: dict | None = None):
    """The transformers config of a preset: dropout off (exact resume), special ids from the data's tokenizer."""
    specials = specials or {"bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID}
    ids = dict(bos_token_id=specials["bos"], eos_token_id=specials["eos"], pad_token_id=specials["pad"])
    if preset.arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=preset.positions, n_embd=preset.hidden, n_layer=preset.n_layer,
            n_head=preset.n_head, n_inner=preset.ffn, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        )
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=preset.hidden, intermediate_size=preset.ffn,
        num_hidden_layers=preset.n_layer, num_attention_heads=preset.n_head, num_key_value_heads=preset.n_head,
        max_position_embeddings=preset.positions, tie_word_embeddings=False, **ids,
    )


def build_model(preset: ModelPreset, vocab_size: int, seed: int = 0, specials: dict | None = None) -> PreTrainedModel:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config(preset, vocab_size, specials))


def count_params(preset: ModelPreset, vocab_size: int = 16000) -> int:
    """Parameter count without allocating weights (meta device)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(preset, vocab_size))
    return sum(p.numel() for p in model.parameters())


def load_model(path: Path, dtype=torch.float32, weights: bool = True) -> PreTrainedModel:
    """A local Hugging Face causal LM; one clear error if the dir is not one. `weights=False`: the
    architecture alone on the meta device (no memory, no weights read), for describing a teacher."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise LogitcacheError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        if weights:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        else:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, OSError, KeyError) as exc:
        raise LogitcacheError(f"{path} is not a loadable causal LM ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model


def weights_sha256(path: Path) -> str:
    """sha256 over the model's weight files (safetensors/bin), in name order."""
    digest = hashlib.sha256()
    for weight_file in sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin")):
        with open(weight_file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# config keys that record where and by what a config was saved, not what the model computes
CONFIG_BOOKKEEPING = ("_name_or_path", "transformers_version", "architectures", "_attn_implementation_autoset",
                      "torch_dtype", "dtype")


def config_sha256(model: PreTrainedModel) -> str:
    """sha256 of the model's architecture settings (its config as transformers reads it, in canonical JSON,
    without the bookkeeping keys): the same weights under another rope_theta or norm epsilon compute other
    logits, so a cache records both hashes."""
    saved = json.loads(model.config.to_json_string(use_diff=False))  # transformers' own serialisation of it
    settings = {k: v for k, v in saved.items() if k not in CONFIG_BOOKKEEPING}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def model_arch(model: PreTrainedModel) -> str:
    return model.config.model_type


def describe(path: Path, model: PreTrainedModel) -> dict:
    return {
        "path": str(path), "arch": model_arch(model), "params": sum(p.numel() for p in model.parameters()),
        "sha256": weights_sha256(path), "config_sha256": config_sha256(model), "vocab_size": int(model.config.vocab_size),
    }
