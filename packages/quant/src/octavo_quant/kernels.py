"""The products of a quantized linear layer: the reference, and the fast CPU int4 kernel.

``ReferenceKernel`` dequantizes the checkpoint tensors on every call and runs the dense
product: exact (float32 dequantization) and the oracle of every other kernel, but it rebuilds
the float weight each step.

``Int4CpuKernel`` keeps 4-bit weights packed in torch's CPU int4 layout
(``_convert_weight_to_int4pack_for_cpu``) and multiplies with
``_weight_int4pack_mm_for_cpu``. That op runs vectorized only for bfloat16 activations (float32
and float16 take a scalar path 20-40x slower, measured: docs/quantization.md), so the kernel
computes in bfloat16 (activations, scales and zero terms) and returns the caller's dtype; it
matches the reference to bfloat16 rounding, not bit for bit. Its groups must be whole runs of
32-256 input features: a group of -1, partial last groups and activation order (``g_idx``
permuted, a gather of the input columns per call) are mapped onto that.

``OCTAVO_QUANT_KERNEL=reference`` forces the reference everywhere.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from octavo_quant.method import GroupQuantMethod
    from octavo_quant.unpacked import UnpackedWeight

logger = logging.getLogger(__name__)

KERNEL_ENV = "OCTAVO_QUANT_KERNEL"
INT4_GROUP_SIZES = (256, 128, 64, 32)  # what _weight_int4pack_mm_for_cpu accepts, largest first
INT4_OFFSET = 8  # the op computes (q - 8) * scale + zero


class ReferenceKernel:
    """Dequantize, then the dense product."""

    owns_weights = False
    name = "reference"

    def __init__(self, method: GroupQuantMethod) -> None:
        self.method = method

    def __call__(self, layer: nn.Module, x: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        weight = self.method.dequantize(layer).to(x.dtype)  # [out, in]
        return F.linear(x, weight, bias)


class Int4CpuKernel(nn.Module):
    """A 4-bit weight in torch's CPU int4 layout; see the module docstring."""

    owns_weights = True
    name = "int4_cpu"

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, group_size: int,
                 perm: torch.Tensor | None, in_features: int, out_features: int) -> None:
        super().__init__()
        self.register_buffer("packed", packed, persistent=False)  # [out, in / 2] uint8
        self.register_buffer("scales_zeros", scales_zeros, persistent=False)  # [G', out, 2]
        self.register_buffer("perm", perm, persistent=False)  # [in] or None
        self.group_size = group_size
        self.in_features = in_features
        self.out_features = out_features

    def __call__(self, layer: nn.Module, x: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.perm is not None:
            rows = rows.index_select(1, self.perm)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows.to(torch.bfloat16).contiguous(), self.packed, self.group_size,
            self.scales_zeros).to(x.dtype)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], self.out_features)

    @classmethod
    def build(cls, weight: UnpackedWeight) -> Int4CpuKernel | None:
        """The kernel for ``weight``, or None where its groups do not fit the op."""
        perm = torch.argsort(weight.g_idx, stable=True)
        g_sorted = weight.g_idx[perm]
        group_size = _contiguous_group_size(g_sorted)
        if group_size is None:
            return None
        starts = g_sorted[::group_size]  # the original group of each kernel group
        scales = weight.scales.float()[starts]  # [G', out]
        zeros = weight.zeros[starts].float()
        scales_zeros = torch.stack([scales, (INT4_OFFSET - zeros) * scales], dim=-1)
        codes = weight.qweight[perm].t().contiguous()  # [out, in] int32
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        identity = bool(torch.equal(perm, torch.arange(len(perm))))
        return cls(packed, scales_zeros.to(torch.bfloat16).contiguous(), group_size,
                   None if identity else perm, weight.in_features, weight.out_features)


def _contiguous_group_size(g_sorted: torch.Tensor) -> int | None:
    """The largest op group size whose runs of ``g_sorted`` each lie in one group."""
    for size in INT4_GROUP_SIZES:
        if len(g_sorted) % size:
            continue
        runs = g_sorted.view(-1, size)
        if bool((runs == runs[:, :1]).all()):
            return size
    return None


def select_kernel(method: GroupQuantMethod, layer: nn.Module):
    """The fastest kernel that runs ``layer`` here: int4 on the CPU, else the reference."""
    reference = ReferenceKernel(method)
    if os.environ.get(KERNEL_ENV, "auto") == "reference":
        return reference
    weight = method.unpack(layer)  # also validates the loaded tensors
    if weight.bits != 4 or weight.qweight.device.type != "cpu":
        return reference
    kernel = Int4CpuKernel.build(weight)
    if kernel is None:
        logger.info("%s: groups do not fit the int4 CPU kernel; using the reference product",
                    layer.quant_geometry.prefix)
        return reference
    return kernel
