"""The dense product behind every unquantized linear layer and the LM head.

**Packed weights on the CPU.** torch's default CPU product (MKL's sgemm) can run a slow
generic path (on AMD processors) and repacks the weight on every call; oneDNN's linear with a
weight packed once for it (the path inductor takes with ``freezing``) does neither. So float32
weights on the CPU are packed once after loading (:func:`pack_for_cpu`) and the layers keep
only the packed copy (an opaque oneDNN tensor: reading its values fails loudly, never
silently). ``OCTAVO_CPU_PACKED_LINEAR=0`` turns packing off. The measurements behind this are
in docs/benchmarks.md ("Dense products").

**Unpacked on the CPU**, torch's BLAS runs one wide product (many output features, few rows)
markedly slower than the same product in column blocks, while a product a few thousand
features wide gains nothing; so only products wider than 8192 features split (docs/benchmarks.md,
"The dense split").
"""

from __future__ import annotations

import logging
import os
from functools import cache

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

CPU_SPLIT_ABOVE = 8192  # output features above which the unpacked CPU product is split
CPU_BLOCK = 1536
PACKED_LINEAR_ENV = "OCTAVO_CPU_PACKED_LINEAR"
PACK_ROWS_HINT = 16  # the row count oneDNN tunes the packed layout for (a decode batch)


def dense_linear(x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` with ``weight: [out_features, in_features]``, plain or packed
    by :func:`pack_for_cpu`."""
    if weight.is_mkldnn:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
        return out.view(*x.shape[:-1], weight.shape[0])
    if x.device.type != "cpu" or weight.shape[0] <= CPU_SPLIT_ABOVE:
        return F.linear(x, weight, bias)
    out = torch.cat([F.linear(x, block) for block in weight.split(CPU_BLOCK)], dim=-1)
    return out + bias if bias is not None else out


def pack_for_cpu(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight`` packed for oneDNN's CPU product, or None where packing does not apply (not
    a float32 CPU tensor, packing turned off, or oneDNN's ops missing or failing their check)."""
    if (weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.is_mkldnn
            or weight.dim() != 2 or not packing_enabled()):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS_HINT)


def packing_enabled() -> bool:
    return os.environ.get(PACKED_LINEAR_ENV, "1") not in ("0", "false", "off") \
        and _packed_product_works()


@cache
def _packed_product_works() -> bool:
    """oneDNN's packed product exists in this torch build and agrees with ``F.linear`` on a
    random product (checked once per process)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(40, 24, generator=generator)
        x = torch.randn(5, 24, generator=generator)
        bias = torch.randn(40, generator=generator)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        ok = torch.allclose(got, F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    except (AttributeError, RuntimeError) as exc:
        logger.info("oneDNN packed linear unavailable (%s); using torch's product", exc)
        return False
    if not ok:
        logger.warning("oneDNN packed linear disagrees with F.linear; using torch's product")
    return ok
