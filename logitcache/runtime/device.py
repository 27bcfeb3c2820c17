"""Rank/world from torchrun's environment; the device and precision a run uses; process group set-up (gloo on
CPU, NCCL on GPU) and the collectives every rank takes together."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import LogitcacheError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(name: str, env: DistEnv) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise LogitcacheError(f"--device cuda: no CUDA device here (torch {torch.__version__}; use --device cpu or auto)")
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device(name)


def init(env: DistEnv, device: torch.device) -> None:
    """Start the process group once when running under torchrun with more than one process."""
    if env.world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def launched_by_torchrun() -> bool:
    """torchrun (and any env:// launcher) sets MASTER_ADDR; a job array that only sets RANK does not."""
    return "MASTER_ADDR" in os.environ


def coordinated() -> bool:
    """Whether the ranks share a process group (collectives and barriers work)."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def all_reduce_min(values: torch.Tensor) -> torch.Tensor:
    """Every rank gets the smallest value: a decision all ranks must take together."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def resolve_precision(device: torch.device, precision: str) -> str:
    """The precision a run uses: `auto` is bf16 autocast on CUDA (fp16 where the GPU lacks bf16) and fp32
    elsewhere; fp32, bf16 and fp16 are taken as asked, on every device."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_for(device: torch.device, precision: str):
    """A context factory: autocast in the precision `resolve_precision` gives, on the device itself (CPU
    included), or nothing for fp32. A device torch has no autocast for is refused by name."""
    import contextlib

    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext
    if not torch.amp.is_autocast_available(device.type):
        raise LogitcacheError(f"--precision {precision}: torch has no autocast on {device.type}; use --precision fp32")
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def broadcast_from_main(value):
    """Rank 0's (picklable) value on every rank; the value itself without a process group."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
