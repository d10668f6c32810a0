"""How a linear layer stores and applies its weight. A model family never knows which is used."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class QuantizationMethod(ABC):
    """Creates a linear layer's parameters and computes ``x @ W.T (+ b)`` from them.

    Registered by the ``quant_method`` of a checkpoint's ``quantization_config``.
    """

    name: str = ""

    @classmethod
    def from_config(cls, quantization_config: dict[str, Any]) -> QuantizationMethod:
        return cls()

    @abstractmethod
    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       dtype: torch.dtype, device: torch.device) -> None:
        """Attach the parameters that hold the weight to ``layer``."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        ...


class UnquantizedMethod(QuantizationMethod):
    """A dense ``weight [out_features, in_features]`` in the model dtype."""

    name = "none"

    def create_weights(self, layer, in_features, out_features, dtype, device):
        layer.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=dtype, device=device),
            requires_grad=False)

    def apply(self, layer, x, bias=None):
        return torch.nn.functional.linear(x, layer.weight, bias)
