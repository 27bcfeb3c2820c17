"""How the model runs over ranks: wrapping (one process, DDP, or FSDP2), gradient sync, and full state dicts.

One process trains the model as it is. Under torchrun with several ranks, DDP keeps a full copy on each rank
and averages gradients; `--fsdp` shards it with FSDP2 (`fully_shard`) per decoder layer, then the root (the
embeddings, final norm and head), as torchtitan's `parallelize_fn` does: each layer's parameters are
gathered just before its forward and backward and freed after, so a rank holds 1/world of the weights,
gradients and optimizer state plus one layer gathered at a time. The root's parameters stay gathered from
its forward to the end of its backward (FSDP2 never reshards the root after forward).

State dicts go through `torch.distributed.checkpoint.state_dict` with full, CPU-offloaded options: the
checkpoint holds plain full tensors keyed by parameter name, whatever the wrapping, so a checkpoint made
under DDP resumes under FSDP and back, and the saved model is a plain Hugging Face folder.
"""
from __future__ import annotations

import contextlib

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.nn.parallel import DistributedDataParallel

from ..errors import LogitcacheError
from ..runtime import device as D


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class the model names in `_no_split_modules` (transformers
    lists its decoder layer classes there: LlamaDecoderLayer, GPT2Block, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise LogitcacheError(f"--fsdp: {type(model).__name__} names no decoder layer class (_no_split_modules); "
                              "it cannot be sharded per layer")
    return layers


def mixed_precision(precision: str):
    """FSDP2's policy for a resolved precision: bf16 parameters in forward and backward with fp32 gradient
    reduction (the sharded master weights and the optimizer stay fp32); None for fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "fp32":
        return None
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    raise LogitcacheError(f"--fsdp with --precision {precision}: use bf16 or fp32 (fp16 needs loss scaling of "
                          "sharded gradients, which train-student does not do)")


def check_fsdp(env: D.DistEnv) -> None:
    """--fsdp shards over ranks: it needs torchrun and at least two of them."""
    if env.world < 2 or not D.launched_by_torchrun():
        raise LogitcacheError("--fsdp shards the model over ranks: run under torchrun with --nproc-per-node 2 or "
                              f"more (world size here: {env.world})")


def wrap(model, env: D.DistEnv, fsdp: bool, precision: str):
    """The module the loop calls: the model itself (one process), DDP over it, or the model sharded in place
    by FSDP2 (per decoder layer, then the root). Build the optimizer from the returned module's parameters."""
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        check_fsdp(env)
        policy = mixed_precision(precision)
        options = {} if policy is None else {"mp_policy": policy}
        layers = decoder_layers(model)
        for i, layer in enumerate(layers):
            # the last layer's backward starts right after the forward ends: keep it gathered (torchtitan)
            fully_shard(layer, reshard_after_forward=i < len(layers) - 1, **options)
        fully_shard(model, **options)
        return model
    if env.world > 1:
        return DistributedDataParallel(model)
    return model


def is_sharded(wrapped) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(wrapped, FSDPModule)


def no_sync(wrapped, sync: bool):
    """A context for one micro-batch's backward: gradients are reduced over ranks only when `sync` (the last
    micro-batch of a step); the others accumulate locally."""
    if is_sharded(wrapped):
        wrapped.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not isinstance(wrapped, DistributedDataParallel):
        return contextlib.nullcontext()
    return wrapped.no_sync()


def _options(**extra) -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def module_of(wrapped):
    """The model under a DDP wrapper (FSDP2 shards the model in place)."""
    return wrapped.module if isinstance(wrapped, DistributedDataParallel) else wrapped


def full_state(wrapped, optimizer=None) -> tuple[dict, dict | None]:
    """(model, optimizer) state dicts as full CPU tensors keyed by parameter name. Every rank must call it
    under FSDP (it gathers the shards); rank 0 gets the tensors, the others empty dicts."""
    model = module_of(wrapped)
    model_state = get_model_state_dict(model, options=_options())
    optim_state = None if optimizer is None else get_optimizer_state_dict(model, optimizer, options=_options())
    return model_state, optim_state


def load_full_state(wrapped, model_state: dict, optimizer=None, optim_state: dict | None = None) -> None:
    """Load full state dicts (as `full_state` gives them) on every rank; under FSDP each rank keeps its shard."""
    model = module_of(wrapped)
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
