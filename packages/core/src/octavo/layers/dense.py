"""The dense product behind every unquantized linear layer and the LM head.

**Packed weights.** After loading, each dense weight is offered to the registered
``pack_linear`` layer op (see :mod:`octavo.layers.layer_ops`); the provider chosen for the
weight's device and dtype returns a :class:`PackedLinear` (the weight in the layout its product
kernel streams, and that product), and the layer keeps only that copy. Core's own provider,
``onednn``, packs float32 CPU weights, and bfloat16 ones where this CPU has a bfloat16 path,
for oneDNN's linear (the path inductor takes with ``freezing``; torch's default CPU product can
run a slow generic path on AMD processors and repacks the weight on every call);
``octavo-kernels-cpu`` registers a faster one. A packed
weight is opaque: code that reads its values fails loudly, never silently.
``OCTAVO_LAYER_OPS=torch`` turns packing off (plain ``F.linear``). Measurements:
docs/benchmarks.md ("Dense products") and packages/kernels-cpu/README.md.

**Unpacked on the CPU**, torch's BLAS runs one wide product (many output features, few rows)
markedly slower than the same product in column blocks, while a product a few thousand
features wide gains nothing; so only products wider than 8192 features split (docs/benchmarks.md,
"The dense split").
"""

from __future__ import annotations

import logging
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from octavo.layers.layer_ops import LayerOps, find_layer_op

logger = logging.getLogger(__name__)

CPU_SPLIT_ABOVE = 8192  # output features above which the unpacked CPU product is split
CPU_BLOCK = 1536
PACK_ROWS_HINT = 16  # the row count oneDNN tunes the packed layout for (a decode batch)


class PackedLinear(nn.Module):
    """A dense weight packed for a faster product; ``packed(x, bias)`` is
    ``x @ W.T + bias`` for ``x [..., in_features]``.

    Providers subclass it (the ``pack_linear`` layer op returns one); the packed tensor is a
    non-persistent buffer ``data``, so it moves with the module and counts in its memory.
    """

    def __init__(self, data: torch.Tensor, out_features: int, in_features: int) -> None:
        super().__init__()
        self.register_buffer("data", data, persistent=False)
        self.out_features = out_features
        self.in_features = in_features

    @property
    def shape(self) -> tuple[int, int]:
        """The logical weight's shape, ``(out_features, in_features)``."""
        return (self.out_features, self.in_features)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 2:
            return self.product(x, bias)
        out = self.product(x.reshape(-1, x.shape[-1]), bias)  # [rows, out_features]
        return out.view(*x.shape[:-1], self.out_features)

    def product(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x [rows, in_features] -> [rows, out_features]``: the provider's kernel."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.out_features}, {self.in_features}"


def pack_dense(weight: torch.Tensor) -> PackedLinear | None:
    """``weight [out_features, in_features]`` packed by the best registered ``pack_linear``
    provider for its device and dtype, or None (no provider, or it declined the weight)."""
    if weight.dim() != 2:
        return None
    pack = find_layer_op("pack_linear", weight)
    return pack(weight.detach()) if pack is not None else None


def dense_linear(x: torch.Tensor, weight: torch.Tensor | PackedLinear,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` with ``weight: [out_features, in_features]``, plain or packed
    by :func:`pack_dense`."""
    if isinstance(weight, PackedLinear):
        return weight.forward(x, bias)  # not through Module.__call__: 4 products a layer
    if x.device.type != "cpu" or weight.shape[0] <= CPU_SPLIT_ABOVE:
        return F.linear(x, weight, bias)
    out = torch.cat([F.linear(x, block) for block in weight.split(CPU_BLOCK)], dim=-1)
    return out + bias if bias is not None else out


class OneDnnPackedLinear(PackedLinear):
    """A CPU weight in oneDNN's packed layout (an opaque mkldnn tensor)."""

    def product(self, x, bias):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.data, bias, "none", [], "")


class OneDnnLayerOps(LayerOps):
    """Core's ``pack_linear`` for CPU weights: oneDNN's packed product, for float32 always and
    for bfloat16 where oneDNN has a bfloat16 path on this CPU (AVX512-BW/VL/DQ, AVX-NE-CONVERT
    or AMX)."""

    name = "onednn"
    priority = 0
    supported_devices = ("cpu",)
    supported_dtypes = (torch.float32, torch.bfloat16)

    @classmethod
    def supports(cls, op, device, dtype):
        return super().supports(op, device, dtype) and _packed_product_works(dtype)

    @staticmethod
    def pack_linear(weight: torch.Tensor) -> PackedLinear | None:
        data = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_ROWS_HINT)
        return OneDnnPackedLinear(data, weight.shape[0], weight.shape[1])


# how close the packed product must come to F.linear (computed in float32) in the self-check
_SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


@cache
def _packed_product_works(dtype: torch.dtype) -> bool:
    """oneDNN's packed product exists in this torch build for ``dtype`` on this CPU and agrees
    with ``F.linear`` on a random product (checked once per process and dtype)."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(40, 24, generator=generator).to(dtype)
        x = torch.randn(5, 24, generator=generator).to(dtype)
        bias = torch.randn(40, generator=generator).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        want = F.linear(x.float(), weight.float(), bias.float())
        tolerance = _SELF_CHECK_TOLERANCE[dtype]
        ok = torch.allclose(got.float(), want, rtol=tolerance, atol=tolerance)
    except (AttributeError, RuntimeError) as exc:
        logger.info("oneDNN packed linear unavailable for %s (%s); using torch's product",
                    dtype, exc)
        return False
    if not ok:
        logger.warning("oneDNN packed linear disagrees with F.linear for %s; using torch's "
                       "product", dtype)
    return ok
