"""Distil a student from a logitcache cache with a plain PyTorch loop.

    python examples/plain_loop.py work/cache.zarr work/data [STEPS]

The cache is a map-style dataset (one item per 128-token chunk, checksum-verified), so any sampler,
DataLoader workers or DistributedSampler work; `distill_loss` is train-student's loss.
"""
import sys

import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from logitcache.integrations import CacheDataset, collate, distill_loss


def main(cache: str, data: str, steps: int = 100) -> list[float]:
    dataset = CacheDataset(cache, data)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=dataset.vocab_size, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=dataset.seq_len))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=collate, num_workers=2, drop_last=True)
    options = dataset.loss_options(alpha=0.5)  # the cache's temperature and kind of targets
    losses = []
    while len(losses) < steps:
        for batch in loader:
            logits = model(input_ids=batch["input_ids"]).logits  # (B, T, V)
            loss, kl, ce = distill_loss(batch, logits=logits, **options)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            print(f"step {len(losses)}: loss {losses[-1]:.4f} kl {float(kl):.4f} ce {float(ce):.4f}")
            if len(losses) == steps:
                break
    return losses


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 100)
