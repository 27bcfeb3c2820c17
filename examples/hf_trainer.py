"""Distil a student from a logitcache cache with Hugging Face's Trainer.

    python examples/hf_trainer.py work/cache.zarr work/data [STEPS]

DistillTrainer is transformers.Trainer whose loss is train-student's (`distill_loss`, at the cache's
temperature); the teacher columns reach it whatever `remove_unused_columns` says.
"""
import sys

from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from logitcache.integrations import CacheDataset
from logitcache.integrations.hf import DistillTrainer


def main(cache: str, data: str, steps: int = 100, out: str = "work/hf-student"):
    dataset = CacheDataset(cache, data)  # a folder or s3://...; every block's checksum verified
    model = LlamaForCausalLM(LlamaConfig(vocab_size=dataset.vocab_size, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=dataset.seq_len))
    args = TrainingArguments(out, per_device_train_batch_size=8, max_steps=steps, learning_rate=3e-3,
                             logging_steps=10, report_to=[], save_strategy="no", dataloader_num_workers=2)
    trainer = DistillTrainer(model=model, args=args, train_dataset=dataset,
                             loss_options=dataset.loss_options(alpha=0.5))
    trainer.train()
    return trainer


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 100)
