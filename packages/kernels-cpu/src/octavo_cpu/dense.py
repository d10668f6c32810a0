"""The CPU dense product ``x @ W.T + b`` on a weight packed once for this kernel.

:func:`pack` turns a float32 ``weight [out_features, in_features]`` into panels of ``NR``
output features, K-major inside a panel (``[ceil(N / NR), K, NR]``, the last panel
zero-padded; ``NR`` is 16 with AVX2, 32 with AVX-512, see :func:`panel_width`), which the
kernel in ``csrc/linear.cpp`` streams once per chunk of rows. :func:`linear` computes the
product from it; float32 accumulation in a fixed order, within float32 rounding of
``F.linear``. A packed weight belongs to the build that made it (the ISA level), so pack
after loading, on the machine that runs the model; keep only the packed copy.

The kernel is built just in time on first use (see :mod:`octavo_cpu.build`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from octavo_cpu.build import load_ops


@dataclass(frozen=True)
class PackedWeight:
    """A weight packed by :func:`pack`: ``data [ceil(N / NR), K, NR]`` float32."""

    data: torch.Tensor
    out_features: int
    in_features: int

    @property
    def shape(self) -> tuple[int, int]:
        """The logical weight's shape, ``(out_features, in_features)``."""
        return (self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


@cache
def _ops() -> Any:
    return load_ops()


def panel_width() -> int:
    """Output features per panel in this build (16 with AVX2, 32 with AVX-512)."""
    return int(_ops().linear_panel_width())


def pack(weight: torch.Tensor) -> PackedWeight:
    """Pack a float32 CPU ``weight [out_features, in_features]`` for :func:`linear`."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
        raise ValueError("pack needs a 2-D float32 CPU weight [out_features, in_features], "
                         f"got {tuple(weight.shape)} {weight.dtype} on {weight.device}")
    data = _ops().pack_linear_weight(weight.detach())
    return PackedWeight(data, weight.shape[0], weight.shape[1])


def linear(x: torch.Tensor, weight: PackedWeight,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` for ``x [..., in_features]`` -> ``[..., out_features]``."""
    if x.dim() == 2:
        return _ops().linear(x, weight.data, weight.out_features, bias)
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    out = _ops().linear(rows, weight.data, weight.out_features, bias)
    return out.view(*x.shape[:-1], weight.out_features)


def linear_out(out: torch.Tensor, x: torch.Tensor, weight: PackedWeight,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`linear` written into ``out [M, out_features]`` (unit stride along features;
    any row stride, so a column slice of a wider tensor works). Returns ``out``."""
    _ops().linear_out(out, x, weight.data, weight.out_features, bias)
    return out
