"""Model presets (DESIGN.md section 3) built from configs as plain `transformers` classes."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel

from .configs import check
from .errors import LogitcacheError
from .tokenizer import BOS_ID, EOS_ID, PAD_ID

transformers.utils.logging.disable_progress_bar()  # progress bars belong to the CLI

ARCHS = ("gpt2", "llama")


@dataclass(frozen=True)
class ModelPreset:
    arch: str
    n_layer: int
    hidden: int
    n_head: int
    ffn: int
    positions: int = 256  # as in the paper's configs (context 128)

    def __post_init__(self):
        check(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        check(self.hidden % self.n_head == 0, "hidden must be a multiple of n_head")


PRESETS: dict[str, ModelPreset] = {
    # the paper's models
    "gpt2-705m": ModelPreset("gpt2", 24, 1536, 16, 6144),
    "llama-360m": ModelPreset("llama", 24, 1024, 8, 3072),
    "llama-58m": ModelPreset("llama", 16, 512, 8, 1024),
    # CPU sizes: tiny for tests (seconds), small for the demo (minutes on 2 cores)
    "gpt2-tiny": ModelPreset("gpt2", 2, 64, 4, 256),
    "llama-tiny": ModelPreset("llama", 2, 64, 4, 128),
    "gpt2-small": ModelPreset("gpt2", 4, 192, 4, 768),
    "llama-small": ModelPreset("llama", 4, 192, 4, 512),
    "llama-student-small": ModelPreset("llama", 2, 96, 4, 256),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise LogitcacheError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def hf_config(preset: ModelPreset, vocab_size: int):
    """The transformers config of a preset: dropout off (exact resume), special ids from our tokenizer."""
    if preset.arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=preset.positions, n_embd=preset.hidden, n_layer=preset.n_layer,
            n_head=preset.n_head, n_inner=preset.ffn, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        )
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=preset.hidden, intermediate_size=preset.ffn,
        num_hidden_layers=preset.n_layer, num_attention_heads=preset.n_head, num_key_value_heads=preset.n_head,
        max_position_embeddings=preset.positions, tie_word_embeddings=False,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )


def build_model(preset: ModelPreset, vocab_size: int, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config(preset, vocab_size))


def count_params(preset: ModelPreset, vocab_size: int = 16000) -> int:
    """Parameter count without allocating weights (meta device)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(preset, vocab_size))
    return sum(p.numel() for p in model.parameters())


def load_model(path: Path, dtype=torch.float32) -> PreTrainedModel:
    """A local Hugging Face causal LM; one clear error if the dir is not one."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise LogitcacheError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except (ValueError, OSError, KeyError) as exc:
        raise LogitcacheError(f"{path} is not a loadable causal LM ({str(exc).splitlines()[0]})") from None
    del config
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


def model_arch(model: PreTrainedModel) -> str:
    return model.config.model_type


def describe(path: Path, model: PreTrainedModel) -> dict:
    return {
        "path": str(path), "arch": model_arch(model), "params": sum(p.numel() for p in model.parameters()),
        "sha256": weights_sha256(path), "vocab_size": int(model.config.vocab_size),
    }
