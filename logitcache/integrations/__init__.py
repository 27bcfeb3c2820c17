"""The cache in other trainers (docs/architecture.md, "Trainer integrations"):

  torch_data.py   CacheDataset (one item per chunk), collate, CacheOrderSampler: plain PyTorch
  hf.py           DistillTrainer (transformers.Trainer), DistillSFTTrainer (TRL), hf_iterable

`distill_loss` is re-exported here: the loss train-student uses (training/losses/distill.py).
"""
from ..training.losses import distill_loss
from .torch_data import CacheDataset, CacheOrderSampler, collate

__all__ = ["CacheDataset", "CacheOrderSampler", "collate", "distill_loss"]
