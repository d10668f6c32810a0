"""LayerNorm with an optional bias (MPT's norms have none), parameters filled by checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from octavo.layers.linear import default_weight_loader


class LayerNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps) * weight (+ bias)`` over the last dim, like ``nn.LayerNorm``.

    Every tensor-parallel rank holds the whole (small) weight and bias.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, *, bias: bool = True,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size, dtype=dtype, device=device),
                                   requires_grad=False)
        self.weight.weight_loader = default_weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(hidden_size, dtype=dtype, device=device),
                                     requires_grad=False)
            self.bias.weight_loader = default_weight_loader
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., hidden] -> [..., hidden]
        return F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, bias={self.bias is not None}"
