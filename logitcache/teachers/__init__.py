"""The teachers: architectures and presets, loading, the ensemble and its combine modes, cross-tokenizer
alignment, and a block's targets."""
