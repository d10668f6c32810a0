"""Weight-only int8 quantization with one scale per output channel."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from octavo.layers.quantization import QuantizationMethod


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``weight ~= qweight * scales[:, None]``.

    Args:
        weight: ``[out_features, in_features]`` float.

    Returns:
        ``qweight [out_features, in_features]`` int8 and ``scales [out_features]``.
    """
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
    qweight = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return qweight, scales.to(weight.dtype)


class Int8WeightOnlyMethod(QuantizationMethod):
    """Stores ``qweight`` (int8) and ``scales``; dequantizes on the fly in ``apply``."""

    name = "example_int8"

    @classmethod
    def from_config(cls, quantization_config: dict[str, Any]) -> Int8WeightOnlyMethod:
        bits = quantization_config.get("bits", 8)
        if bits != 8:
            raise ValueError(f"example_int8 supports bits=8 only, not {bits}")
        return cls()

    def create_weights(self, layer, in_features, out_features, dtype, device):
        layer.qweight = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
            requires_grad=False)
        layer.scales = nn.Parameter(torch.ones(out_features, dtype=dtype, device=device),
                                    requires_grad=False)

    def apply(self, layer, x, bias=None):
        # x: [num_tokens, in_features] -> [num_tokens, out_features]
        weight = layer.qweight.to(x.dtype) * layer.scales.to(x.dtype)[:, None]
        return F.linear(x, weight, bias)
