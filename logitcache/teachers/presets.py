"""Model presets (docs/architecture.md, "Models"): sizes only, no torch, so configs validate instantly."""
from __future__ import annotations

from dataclasses import dataclass

from .._settings import check
from ..errors import LogitcacheError

ARCHS = ("llama", "gpt2")  # the architectures a preset may have; config.Arch derives from it


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
