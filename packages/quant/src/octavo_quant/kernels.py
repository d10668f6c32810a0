"""The products of a quantized linear layer: the reference, the CPU int4/int8 and the Triton
kernels.

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

``PackedInt4Kernel`` (4-bit on the CPU, where a ``pack_int4_linear`` layer op serves the model's
dtype: octavo-kernels-cpu's C++ kernel for float32) keeps the weight 4-bit in the op's layout and
multiplies with float32 activations, no casts (1.7-3x faster than ``Int4CpuKernel`` at one row,
measured: docs/quantization.md); ``Int4CpuKernel`` serves bfloat16 models and CPUs without it.

``PackedInt8Kernel`` (8-bit on the CPU, where a ``pack_int8_linear`` layer op serves the model's
dtype: octavo-kernels-cpu's C++ kernel for float32) is the same for 8-bit weights (a byte per
code). torch's ``_weight_int8pack_mm`` takes one scale per output channel (no groups, no zero
points), so 8-bit layers without the layer op (bfloat16 models, no compiler) use the reference.

``TritonKernel`` (CUDA, where Triton is installed) is a fused dequantize-and-multiply for any
bit width, group size and ``g_idx`` (:mod:`octavo_quant.triton_gemm`).

``OCTAVO_QUANT_KERNEL=reference`` forces the reference everywhere.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from octavo.layers.layer_ops import LAYER_OPS, find_layer_op

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


class PackedInt4Kernel(nn.Module):
    """A 4-bit weight packed by a ``pack_int4_linear`` layer op (octavo-kernels-cpu's C++
    kernel: float32 activations, the weight unpacked in registers); see the module docstring."""

    owns_weights = True
    name = "int4_packed"
    layer_op = "pack_int4_linear"

    def __init__(self, linear: nn.Module, perm: torch.Tensor | None) -> None:
        super().__init__()
        self.linear = linear  # a PackedLinear: (x, bias) -> x @ W.T + bias
        self.register_buffer("perm", perm, persistent=False)  # [in] or None

    def __call__(self, layer: nn.Module, x: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        return self.linear(x, bias)

    @classmethod
    def build(cls, weight: UnpackedWeight, pack) -> PackedInt4Kernel | None:
        """The kernel from the layer op ``pack``, or None where the op declines the weight."""
        perm = torch.argsort(weight.g_idx, stable=True)  # input features in group order
        linear = pack(weight.qweight[perm], weight.scales, weight.zeros, weight.g_idx[perm])
        if linear is None:
            return None
        identity = bool(torch.equal(perm, torch.arange(len(perm), device=perm.device)))
        return cls(linear, None if identity else perm)


class PackedInt8Kernel(PackedInt4Kernel):
    """An 8-bit weight packed by a ``pack_int8_linear`` layer op (octavo-kernels-cpu's C++
    kernel: float32 activations, a byte per code widened in registers)."""

    name = "int8_packed"
    layer_op = "pack_int8_linear"


class TritonKernel(nn.Module):
    """The fused dequantize-and-multiply Triton kernel (CUDA), :mod:`octavo_quant.triton_gemm`.

    Any bit width, group size and ``g_idx``; the weight is repacked once into the kernel's
    layout (codes packed along the input features, uint8 zeros), whatever the format.
    """

    owns_weights = True
    name = "triton"

    def __init__(self, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 g_idx: torch.Tensor, bits: int, group_size: int) -> None:
        super().__init__()
        self.register_buffer("packed", packed, persistent=False)  # [ceil(in / pack), out]
        self.register_buffer("scales", scales, persistent=False)  # [G, out]
        self.register_buffer("zeros", zeros, persistent=False)  # [G, out] uint8
        self.register_buffer("g_idx", g_idx, persistent=False)  # [in] int32
        self.bits = bits
        self.group_size = group_size  # contiguous groups of this size, or 0: read g_idx
        self.in_features = g_idx.shape[0]
        self.out_features = scales.shape[1]

    def __call__(self, layer: nn.Module, x: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        from octavo_quant.triton_gemm import dequant_matmul

        rows = x.reshape(-1, self.in_features)
        out = dequant_matmul(rows, self.packed, self.scales, self.zeros, self.g_idx, bias,
                             self.bits, self.group_size)
        return out.reshape(*x.shape[:-1], self.out_features)

    @classmethod
    def build(cls, weight: UnpackedWeight) -> TritonKernel:
        from octavo_quant.packing import pack_rows
        from octavo_quant.triton_gemm import BLOCK_K

        size = int((weight.g_idx == 0).sum())  # the first group's
        g_idx = weight.g_idx.cpu()
        contiguous = size > 0 and torch.equal(g_idx, torch.arange(len(g_idx)) // size)
        group_size = size if contiguous and size % BLOCK_K == 0 else 0
        return cls(pack_rows(weight.qweight, weight.bits), weight.scales.contiguous(),
                   weight.zeros.to(torch.uint8).contiguous(),
                   weight.g_idx.to(torch.int32).contiguous(), weight.bits, group_size)


def triton_available() -> bool:
    """Whether Triton is importable (the kernel module imports it only when first used)."""
    return importlib.util.find_spec("triton") is not None


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
    """The fastest kernel that runs ``layer`` here: Triton on CUDA (where it is installed); on
    the CPU, a ``pack_int4_linear`` (4-bit) or ``pack_int8_linear`` (8-bit) layer op for the
    model's dtype (octavo-kernels-cpu: float32), else for 4-bit torch's int4 product; else the
    reference."""
    reference = ReferenceKernel(method)
    if os.environ.get(KERNEL_ENV, "auto") == "reference":
        return reference
    weight = method.unpack(layer)  # also validates the loaded tensors
    device = weight.qweight.device.type
    if device == "cuda" and triton_available():
        return TritonKernel.build(weight)
    packed_kernel = {4: PackedInt4Kernel, 8: PackedInt8Kernel}.get(weight.bits)
    if packed_kernel is None or device != "cpu":
        return reference
    dtype = layer.quant_geometry.dtype
    pack = find_pack_op(packed_kernel.layer_op, dtype)
    kernel = packed_kernel.build(weight, pack) if pack is not None else None
    if kernel is not None:
        return kernel
    if weight.bits != 4:
        return reference
    kernel = Int4CpuKernel.build(weight)
    if kernel is None:
        logger.info("%s: groups do not fit the int4 CPU kernel; using the reference product",
                    layer.quant_geometry.prefix)
        return reference
    return kernel


def find_pack_op(op: str, dtype: torch.dtype):
    """The layer op ``op`` for ``dtype`` on the CPU, or None (no provider, or a core that does
    not know the op yet)."""
    if op not in LAYER_OPS:
        return None
    return find_layer_op(op, torch.empty(0, dtype=dtype))
