"""octavo_cpu's layer ops: the packed float32 dense product of ``csrc/linear.cpp`` and the
C++ RMSNorm, fused add + RMSNorm, rotary and SiLU-and-multiply (``csrc/norm.cpp``,
``rotary.cpp``, ``activation.cpp``).

Registered through ``register_layer_ops`` above core's oneDNN packing and torch code
(priority 5 against 0): every unquantized float32 linear layer and the LM head on the CPU keep
their weight packed by :func:`octavo_cpu.dense.pack` and run :func:`octavo_cpu.dense.linear`;
norms, rotary and the gated SiLU run the C++ ops in float32 and bfloat16 (float32 arithmetic
inside; the kernels take float16 too, but convert it with scalar code, slower than torch's
SiLU, so the provider does not offer it). Without a compiler the provider declines
(``supports`` is False) and core's oneDNN packing and torch code are used.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from octavo.layers.dense import PackedLinear
from octavo.layers.layer_ops import LayerOps
from octavo_cpu import dense, int4_linear
from octavo_cpu.build import load_ops, unavailable_reason


class CpuPackedLinear(PackedLinear):
    """A weight in the kernel's panel layout (``octavo_cpu.dense.PackedWeight``)."""

    def __init__(self, weight: dense.PackedWeight) -> None:
        super().__init__(weight.data, weight.out_features, weight.in_features)
        self._linear = load_ops().linear  # the op itself: no Python between layer and kernel

    def product(self, x, bias):
        return self._linear(x, self.data, self.out_features, bias)


_FLOAT32_ONLY = ("pack_linear", "pack_int4_linear", "pack_int8_linear")


@cache
def _kernels() -> Any:
    return load_ops()


class CpuLayerOps(LayerOps):
    name = "cpu"
    priority = 5
    supported_devices = ("cpu",)
    supported_dtypes = (torch.float32, torch.bfloat16)

    @classmethod
    def supports(cls, op, device, dtype):
        if op in _FLOAT32_ONLY and dtype != torch.float32:  # float32 kernels
            return False
        return super().supports(op, device, dtype) and unavailable_reason() is None

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return _kernels().rms_norm(x, weight, eps)

    @staticmethod
    def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return _kernels().fused_add_rms_norm(x, residual, weight, eps)

    @staticmethod
    def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               is_neox_style: bool) -> torch.Tensor:
        return _kernels().rotary(x, cos, sin, is_neox_style)

    @staticmethod
    def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
        return _kernels().silu_and_mul(x)

    @staticmethod
    def pack_linear(weight: torch.Tensor) -> PackedLinear:
        return CpuPackedLinear(dense.pack(weight))

    @staticmethod
    def pack_int4_linear(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                         g_idx: torch.Tensor) -> PackedLinear:
        return int4_linear.pack(codes, scales, zeros, g_idx)

    @staticmethod
    def pack_int8_linear(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                         g_idx: torch.Tensor) -> PackedLinear:
        return int4_linear.pack_int8(codes, scales, zeros, g_idx)
