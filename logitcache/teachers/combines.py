"""The ensemble's combine modes: name -> the one object that combines the teachers and documents it.

Per teacher i, z_i are its logits over the tokenizer's ids and p_i = softmax(z_i / T). A mode fills the
ensemble's reusable (B, T, V) float32 buffers with the ensemble distribution and says how many such
buffers a row needs (the ensemble sizes its row slices by that). This module imports no torch at load
time: config.py derives the `Combine` choices and their help from `COMBINES`, and the CLI's start-up
imports neither torch nor zarr.
"""
from __future__ import annotations

import typing

if typing.TYPE_CHECKING:
    import torch


class Ensemble(typing.Protocol):
    """What a mode reads of the ensemble it combines (ensemble.Ensemble)."""

    models: list
    temperature: float
    vocab_size: int

    def buffer(self, name: str, shape) -> torch.Tensor: ...

    def logits_into(self, i: int, input_ids: torch.Tensor, out: torch.Tensor, scale: float,
                    accumulate: bool = False) -> torch.Tensor: ...


def softmax_(x: torch.Tensor) -> torch.Tensor:
    """In-place softmax over the last dim: torch's fused kernel (max, then exp-sum, then one write per row),
    2x faster on CPU than sub_/exp_/div_ passes over (B, T, V)."""
    import torch  # here, not at the top: see the module docstring

    return torch.softmax(x, dim=-1, out=x)


class MeanLogits:
    """softmax(mean_i z_i / T): the paper's code. Over fast heads the logits accumulate inside the fp32 GEMMs
    (BLAS alpha/beta), so one buffer suffices."""

    help = "mean-logits (softmax of the mean logits, the paper's code)"

    def buffers_per_row(self, all_fast: bool) -> int:
        return 1 if all_fast else 2  # a model's own forward returns its logits in a second (B, T, V) tensor

    def combine(self, ensemble: Ensemble, input_ids: torch.Tensor) -> torch.Tensor:
        acc = ensemble.buffer("acc", (*input_ids.shape, ensemble.vocab_size))  # (B, T, V)
        scale = 1.0 / (len(ensemble.models) * ensemble.temperature)
        for i in range(len(ensemble.models)):
            ensemble.logits_into(i, input_ids, acc, scale, accumulate=i > 0)  # acc = mean_i z_i / T
        return softmax_(acc)  # one fused pass


class MeanProbs:
    """mean_i p_i: each teacher's distribution at T, averaged."""

    help = "mean-probs (the mean of the teachers' distributions)"

    def buffers_per_row(self, all_fast: bool) -> int:
        return 2  # the sum and one teacher's logits

    def combine(self, ensemble: Ensemble, input_ids: torch.Tensor) -> torch.Tensor:
        shape = (*input_ids.shape, ensemble.vocab_size)
        acc = ensemble.buffer("acc", shape)  # (B, T, V)
        work = ensemble.buffer("work", shape)  # (B, T, V)
        acc.zero_()
        for i in range(len(ensemble.models)):
            acc.add_(softmax_(ensemble.logits_into(i, input_ids, work, 1.0 / ensemble.temperature)))
        return acc.mul_(1.0 / len(ensemble.models))


COMBINES: dict[str, MeanLogits | MeanProbs] = {"mean-logits": MeanLogits(), "mean-probs": MeanProbs()}


def refuse_mean_logits(combine: str, own: list[str], option: str = "--combine {}") -> None:
    """Teachers on tokenizers of their own (`own`: their names) are averaged as probabilities: `combine`
    mean-logits is refused in one line (logits of two vocabularies do not add), naming the setting as
    `option` spells it."""
    if own and combine == "mean-logits":
        from ..errors import LogitcacheError

        raise LogitcacheError(f"{option.format('mean-logits')} averages logits over one vocabulary, and teacher(s) "
                              f"{', '.join(own)} have a different tokenizer than the data (a tokenizer of their own): use "
                              f"{option.format('mean-probs')}")


def combines_help() -> str:
    """'a (...) or b (...)': every mode with its description, for the options' help."""
    described = [mode.help for mode in COMBINES.values()]
    return ", ".join(described[:-1]) + " or " + described[-1] if len(described) > 1 else described[0]
