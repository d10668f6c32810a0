"""A layer-ops provider: RMSNorm computed in float64 (a stand-in for a faster kernel)."""

from __future__ import annotations

import torch

from octavo.layers.layer_ops import LayerOps


class Float64LayerOps(LayerOps):
    """RMSNorm on CPU float32 inputs, computed in float64; used only when named
    (``OCTAVO_LAYER_OPS=example-ops``), as its priority is negative."""

    name = "example-ops"
    priority = -10
    supported_devices = ("cpu",)
    supported_dtypes = (torch.float32,)

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        h = x.double()  # [..., hidden]
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return (weight.double() * h).to(x.dtype)
