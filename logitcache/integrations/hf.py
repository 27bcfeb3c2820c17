"""Distillation from a cache in Hugging Face's `Trainer` and TRL's `SFTTrainer` (README, "Use the cache in
your own trainer"; examples/).

    from logitcache.integrations.hf import DistillTrainer
    from logitcache.torch import CacheDataset
    dataset = CacheDataset("work/cache.zarr", "work/data")
    trainer = DistillTrainer(model=model, args=TrainingArguments("out", max_steps=100), train_dataset=dataset)
    trainer.train()

`compute_loss` is `distill_loss` (training/losses/distill.py), the function train-student's objective
calls, on the batch's teacher targets and, as train-student does, the student's final hidden states and
head (the fused head loss: no (B, T, V) logits; `fused_head=False`, or a head it cannot reproduce: the
full logits), with the cache's temperature and kind
unless `loss_options` says otherwise. The teacher columns are never dropped: Trainer's
`remove_unused_columns` (default True) would remove every column the model's forward does not name,
topk_ids and topk_probs among them, so the subclasses skip that step whatever the arguments say.
The loss is a mean over the micro-batch, so Trainer divides it by the gradient accumulation steps
(`loss_is_scaled_for_ga = False`), as train-student does.

TRL's SFTTrainer takes only `datasets` datasets: `hf_iterable(dataset)` streams a CacheDataset as a
`datasets.IterableDataset` (then SFTConfig needs `max_steps`, and `dataset_kwargs={"skip_prepare_dataset":
True}`, which `DistillSFTTrainer` sets: the rows are already tokenized chunks).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import Trainer

from ..training.losses import distill_loss
from ..training.losses.linear import Head, check_head, hidden_states_of, linear_head
from .torch_data import CacheDataset, collate

log = logging.getLogger(__name__)


class DistillMixin:
    """compute_loss = distill_loss; the cache's columns kept; optional `train_sampler` (e.g.
    CacheOrderSampler: train-student's data order); kl and ce logged beside the loss."""

    def __init__(self, *args, loss_options: dict | None = None, train_sampler=None, fused_head: bool = True,
                 **kwargs):
        dataset = kwargs.get("train_dataset")
        if loss_options is None:
            if not isinstance(dataset, CacheDataset):
                raise ValueError("pass loss_options (alpha, temperature, targets ...) when train_dataset is not a "
                                 "CacheDataset")
            loss_options = dataset.loss_options()
        self.loss_options = dict(loss_options)
        self.train_sampler = train_sampler
        self.fused_head, self.head = fused_head, None  # the head, once the first batch showed it fuses
        kwargs.setdefault("data_collator", collate)
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False  # a mean per micro-batch: Trainer divides by the accumulation steps
        self._distill_sums: dict[str, float] = {}
        self._distill_count = 0

    def student_head(self, model, input_ids: torch.Tensor) -> Head | None:
        """The head the fused loss takes over (training/losses/linear.py), or None: full logits."""
        if self.fused_head and self.head is None:
            head, why = linear_head(self.accelerator.unwrap_model(model))
            why = why or check_head(model, head, input_ids)
            self.fused_head, self.head = not why, None if why else head
            if why:
                log.warning("the loss takes the student's full logits (fused_head=False): %s", why)
        return self.head

    def compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        head = self.student_head(model, inputs["input_ids"])
        if head is None:
            outputs = model(input_ids=inputs["input_ids"])
            loss, kl, ce = distill_loss(inputs, logits=outputs.logits, **self.loss_options)
        else:  # the model's own forward, ending at its head (its logits (B, T, 0))
            with hidden_states_of(head.module) as seen:
                outputs = model(input_ids=inputs["input_ids"])
            student = dict(hidden=seen["hidden"], head_weight=seen["weight"], head_bias=seen["bias"],
                           logit_scale=head.logit_scale, logit_softcap=head.logit_softcap)
            loss, kl, ce = distill_loss(inputs, **student, **self.loss_options)
        if model.training:
            for name, value in (("kl", kl), ("ce", ce)):
                if value is not None:
                    self._distill_sums[name] = self._distill_sums.get(name, 0.0) + float(value)
            self._distill_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._distill_count and "loss" in logs:
            logs.update({name: total / self._distill_count for name, total in self._distill_sums.items()})
            self._distill_sums, self._distill_count = {}, 0
        super().log(logs, *args, **kwargs)

    # the teacher columns are not the model's inputs: Trainer would drop them (remove_unused_columns)
    def _remove_unused_columns(self, dataset, description=None):
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator

    def _get_train_sampler(self, train_dataset=None):
        return self.train_sampler if self.train_sampler is not None else super()._get_train_sampler(train_dataset)


class DistillTrainer(DistillMixin, Trainer):
    """`transformers.Trainer` that distils from a cache: pass a CacheDataset as `train_dataset` (the loss
    takes the cache's temperature and kind; `loss_options` overrides: alpha, tail, reduction ...)."""


def hf_iterable(dataset: CacheDataset, seed: int = 0):
    """A CacheDataset streamed as a `datasets.IterableDataset` of torch tensors (rows in a seeded random
    order each pass), for trainers that take only `datasets` datasets (TRL's SFTTrainer)."""
    import datasets

    def rows(seed: int):
        for index in torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist():
            yield {key: value.numpy() for key, value in dataset[index].items()}

    return datasets.IterableDataset.from_generator(rows, gen_kwargs={"seed": seed}).with_format("torch")


def __getattr__(name: str):
    if name == "DistillSFTTrainer":  # trl is optional: built on first use
        from trl import SFTTrainer

        class DistillSFTTrainer(DistillMixin, SFTTrainer):
            """TRL's `SFTTrainer` that distils from a cache: `train_dataset=hf_iterable(cache_dataset)` and
            `loss_options=cache_dataset.loss_options()`; dataset preparation is skipped (the rows are
            tokenized chunks already)."""

            def __init__(self, *args, **kwargs):
                config = kwargs.get("args")
                if config is not None:
                    config.dataset_kwargs = dict(config.dataset_kwargs or {}, skip_prepare_dataset=True)
                super().__init__(*args, **kwargs)

        globals()[name] = DistillSFTTrainer
        return DistillSFTTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
