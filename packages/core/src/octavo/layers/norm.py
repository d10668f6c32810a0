"""RMSNorm, optionally fused with the residual add that precedes it."""

from __future__ import annotations

import torch
from torch import nn

from octavo.layers.layer_ops import find_layer_op
from octavo.layers.linear import default_weight_loader


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)``, normalized in float32 like HF's LlamaRMSNorm."""
    dtype = x.dtype
    h = x.float()  # [..., hidden]
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale.

    ``forward(x)`` returns the normalized ``x``; ``forward(x, residual)`` first adds the residual
    and returns ``(normalized sum, sum)``, the sum being the next residual.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size, dtype=dtype, device=device),
                                   requires_grad=False)
        self.weight.weight_loader = default_weight_loader
        self._ops_dtype: torch.dtype | None = None  # the dtype the ops below were chosen for

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.dtype is not self._ops_dtype:
            self._choose_ops(x)
        if residual is None:
            return self._rms_norm(x, self.weight, self.eps)
        if self._fused_add_rms_norm is not None:
            return self._fused_add_rms_norm(x, residual, self.weight, self.eps)
        x = x + residual  # [num_tokens, hidden]
        return rms_norm(x, self.weight, self.eps), x

    def _choose_ops(self, x: torch.Tensor) -> None:
        """The registered faster ops for ``x``'s device and dtype (see
        :mod:`octavo.layers.layer_ops`), else the torch code; chosen at the first forward in
        a dtype and kept, since a lookup per call costs as much as a small op."""
        self._rms_norm = find_layer_op("rms_norm", x) or rms_norm
        self._fused_add_rms_norm = find_layer_op("fused_add_rms_norm", x)
        self._ops_dtype = x.dtype

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
