"""octavo_cpu's layer ops: the packed float32 dense product of ``csrc/linear.cpp``.

Registered through ``register_layer_ops`` above core's oneDNN packing (priority 5 against 0):
every unquantized float32 linear layer and the LM head on the CPU keep their weight packed by
:func:`octavo_cpu.dense.pack` and run :func:`octavo_cpu.dense.linear`. Without a compiler the
provider declines (``supports`` is False) and core's oneDNN packing is used.
"""

from __future__ import annotations

import torch

from octavo.layers.dense import PackedLinear
from octavo.layers.layer_ops import LayerOps
from octavo_cpu import dense
from octavo_cpu.build import load_ops, missing_toolchain


class CpuPackedLinear(PackedLinear):
    """A weight in the kernel's panel layout (``octavo_cpu.dense.PackedWeight``)."""

    def __init__(self, weight: dense.PackedWeight) -> None:
        super().__init__(weight.data, weight.out_features, weight.in_features)
        self._linear = load_ops().linear  # the op itself: no Python between layer and kernel

    def product(self, x, bias):
        return self._linear(x, self.data, self.out_features, bias)


class CpuLayerOps(LayerOps):
    name = "cpu"
    priority = 5
    supported_devices = ("cpu",)
    supported_dtypes = (torch.float32,)

    @classmethod
    def supports(cls, op, device, dtype):
        return super().supports(op, device, dtype) and missing_toolchain() is None

    @staticmethod
    def pack_linear(weight: torch.Tensor) -> PackedLinear:
        return CpuPackedLinear(dense.pack(weight))
