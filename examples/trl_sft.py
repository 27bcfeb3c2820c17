"""Distil a student from a logitcache cache with TRL's SFTTrainer.

    python examples/trl_sft.py work/cache.zarr work/data [STEPS]

SFTTrainer takes only `datasets` datasets: `hf_iterable` streams the cache's rows as one (already
tokenized chunks, so dataset preparation is skipped). The loss is train-student's (`distill_loss`).
"""
import sys
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig

from logitcache.integrations import CacheDataset
from logitcache.integrations.hf import DistillSFTTrainer, hf_iterable


def main(cache: str, data: str, steps: int = 100, out: str = "work/sft-student"):
    dataset = CacheDataset(cache, data)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(data) / "tokenizer.json"), pad_token="<pad>")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=dataset.vocab_size, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=dataset.seq_len))
    args = SFTConfig(out, per_device_train_batch_size=8, max_steps=steps, learning_rate=3e-3, logging_steps=10,
                     report_to=[], save_strategy="no", max_length=None, bf16=False)
    trainer = DistillSFTTrainer(model=model, args=args, train_dataset=hf_iterable(dataset), processing_class=tokenizer,
                                loss_options=dataset.loss_options(alpha=0.5))
    trainer.train()
    return trainer


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 100)
