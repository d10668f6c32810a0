"""Tensor-parallel helpers: sizes and collectives (identities while ``tensor_parallel_size`` is 1).

Collectives use the default ``torch.distributed`` process group, which whoever builds the
model with ``tensor_parallel_size > 1`` must have initialized (the engine runs one rank today).
"""

from __future__ import annotations

import torch

from octavo.modeling import ParallelConfig


def divide(numerator: int, denominator: int) -> int:
    """``numerator / denominator``, which must divide exactly."""
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by {denominator}")
    return numerator // denominator


def all_reduce(x: torch.Tensor, parallel: ParallelConfig) -> torch.Tensor:
    """Sum ``x`` over the tensor-parallel ranks (in place)."""
    if parallel.tensor_parallel_size == 1:
        return x
    torch.distributed.all_reduce(x)
    return x


def all_gather(x: torch.Tensor, parallel: ParallelConfig, dim: int = -1) -> torch.Tensor:
    """Concatenate each rank's ``x`` along ``dim``, in rank order."""
    world = parallel.tensor_parallel_size
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)
