"""How a linear layer stores and applies its weight. A model family never knows which is used.

Parameters a method creates may carry loading hints as attributes (set them with
:func:`set_weight_attrs`); the parallel linear layers' weight loaders read them to place a
checkpoint shard into a merged or tensor-parallel parameter:

- ``output_dim`` / ``input_dim``: which tensor dim runs along the layer's output / input
  features (``None``: the parameter has no such dim and is copied whole). Defaults when the
  attribute is absent: ``output_dim=0``; ``input_dim=1`` for 2-D parameters, else ``None``.
- ``packed_dim`` and ``pack_factor``: that dim stores ``pack_factor`` logical values per element
  (for example eight int4 values per int32), so offsets along it are divided by the factor.
- ``optional``: a checkpoint may omit the parameter (GPTQ's ``g_idx``); the method fills in a
  default after loading instead of the loader reporting it missing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


def set_weight_attrs(param: torch.Tensor, attrs: dict[str, Any] | None) -> None:
    """Attach loading hints (``output_dim``, ``input_dim``, ``weight_loader``...) to ``param``."""
    for key, value in (attrs or {}).items():
        if hasattr(param, key) and key != "weight_loader":
            raise AttributeError(f"parameter already has attribute {key!r}")
        setattr(param, key, value)


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

    def for_layer(self, prefix: str) -> QuantizationMethod | None:
        """The method for the linear layer named ``prefix`` (``model.layers.0.mlp.down_proj``).

        Override to leave some layers unquantized (return None); the default quantizes all.
        """
        return self

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack or transform ``layer``'s parameters once all checkpoint shards are loaded."""
        return None


class UnquantizedMethod(QuantizationMethod):
    """A dense ``weight [out_features, in_features]`` in the model dtype."""

    name = "none"

    def create_weights(self, layer, in_features, out_features, dtype, device):
        layer.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=dtype, device=device),
            requires_grad=False)
        set_weight_attrs(layer.weight, {"output_dim": 0, "input_dim": 1})
        layer.packed_weight = None

    def apply(self, layer, x, bias=None):
        from octavo.layers.dense import dense_linear

        packed = layer.packed_weight
        return dense_linear(x, layer.weight if packed is None else packed, bias)

    def process_weights_after_loading(self, layer):
        """Keep only a packed copy of the weight where a ``pack_linear`` provider takes it
        (see ``layers/dense.py``): ``layer.packed_weight`` computes the product, and
        ``layer.weight`` holds the packed (opaque) tensor instead of the plain one."""
        from octavo.layers.dense import pack_dense

        packed = pack_dense(layer.weight)
        if packed is not None:
            layer.weight = nn.Parameter(packed.data, requires_grad=False)
            layer.packed_weight = packed
