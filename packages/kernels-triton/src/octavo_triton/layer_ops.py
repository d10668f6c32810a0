"""Triton layer ops (RMSNorm, fused residual-add RMSNorm, rotary) for ``register_layer_ops``.

On CUDA they outrank the torch code (priority 10). Under Triton's CPU interpreter they run
only when named (``OCTAVO_LAYER_OPS=triton``), as they are far slower than torch there.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from octavo.layers.layer_ops import LayerOps
from octavo_triton.launch import interpreter_requested, triton_unavailable_reason
from octavo_triton.norm_kernels import fused_add_rms_norm, rms_norm
from octavo_triton.rotary_kernels import rotary


class TritonLayerOps(LayerOps):
    name = "triton"
    priority: ClassVar[int] = -10 if interpreter_requested() else 10
    supported_devices: ClassVar[tuple[str, ...]] = ("cuda", "cpu")

    @classmethod
    def supports(cls, op: str, device: torch.device | str, dtype: torch.dtype) -> bool:
        return triton_unavailable_reason(device) is None and super().supports(op, device, dtype)

    rms_norm = staticmethod(rms_norm)
    fused_add_rms_norm = staticmethod(fused_add_rms_norm)
    rotary = staticmethod(rotary)
