"""What GPTQ and AWQ linear methods share: parameters from a layout, loading, kernel choice.

A format (:mod:`octavo_quant.gptq`, :mod:`octavo_quant.awq`) lists the checkpoint tensors of
one linear layer as :class:`QuantParam` s and says how to unpack them into an
:class:`~octavo_quant.unpacked.UnpackedWeight`. The parameters carry the loading hints of
``octavo.layers.quantization`` (``output_dim``, ``input_dim``, ``packed_dim``,
``pack_factor``), so merged QKV / gate-up layers and tensor-parallel shards load them with the
layers' own weight loaders. After loading, :func:`octavo_quant.kernels.select_kernel` picks the
product: the fast CPU kernel where it applies, else the reference (dequantize, then the dense
product).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from octavo.layers.quantization import QuantizationMethod, set_weight_attrs
from octavo_quant.config import QuantConfigError
from octavo_quant.kernels import ReferenceKernel, select_kernel
from octavo_quant.unpacked import UnpackedWeight


@dataclass(frozen=True)
class QuantParam:
    """One checkpoint tensor of a quantized linear layer: its name, shape, dtype and hints."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    attrs: dict[str, Any] = field(default_factory=dict)
    fill: int | None = None  # initial value, for tensors a checkpoint may omit


@dataclass(frozen=True)
class LayerGeometry:
    """What a method needs to know about the layer it creates weights for."""

    prefix: str
    in_features: int  # this rank's
    out_features: int  # this rank's
    full_in_features: int  # before a row-parallel split
    tp_rank: int
    dtype: torch.dtype

    @property
    def input_split(self) -> bool:
        return self.full_in_features != self.in_features

    @classmethod
    def of(cls, layer: nn.Module, in_features: int, out_features: int,
           dtype: torch.dtype) -> LayerGeometry:
        parallel = getattr(layer, "parallel", None)
        return cls(prefix=getattr(layer, "prefix", "") or type(layer).__name__,
                   in_features=in_features, out_features=out_features,
                   full_in_features=getattr(layer, "full_input_size", in_features),
                   tp_rank=parallel.rank if parallel is not None else 0, dtype=dtype)


class GroupQuantMethod(QuantizationMethod):
    """Base of the group-quantized (GPTQ, AWQ) linear methods."""

    config_class: type  # GPTQConfig or AWQConfig: ``from_dict(raw)`` validates a config

    def __init__(self, config) -> None:
        self.config = config
        self.bits: int = config.bits
        self.group_size: int = config.group_size

    @classmethod
    def from_config(cls, quantization_config: dict[str, Any]) -> GroupQuantMethod:
        return cls(cls.config_class.from_dict(quantization_config))

    @abstractmethod
    def params(self, geometry: LayerGeometry) -> list[QuantParam]:
        """The checkpoint tensors of a layer (raise QuantConfigError if it cannot be stored)."""

    @abstractmethod
    def unpack(self, layer: nn.Module) -> UnpackedWeight:
        """The loaded tensors of ``layer`` in unpacked form."""

    def create_weights(self, layer, in_features, out_features, dtype, device):
        geometry = LayerGeometry.of(layer, in_features, out_features, dtype)
        for spec in self.params(geometry):
            data = torch.empty(spec.shape, dtype=spec.dtype, device=device)
            if spec.fill is not None:
                data.fill_(spec.fill)
            param = nn.Parameter(data, requires_grad=False)
            set_weight_attrs(param, spec.attrs)
            layer.register_parameter(spec.name, param)
        layer.quant_geometry = geometry
        layer.quant_kernel = ReferenceKernel(self)

    def apply(self, layer, x, bias=None):
        return layer.quant_kernel(layer, x, bias)

    def process_weights_after_loading(self, layer):
        if layer.quant_kernel.owns_weights:  # already repacked (a second call)
            return
        kernel = select_kernel(self, layer)
        if kernel.owns_weights:  # the kernel holds its own copy: drop the checkpoint's
            for spec in self.params(layer.quant_geometry):
                delattr(layer, spec.name)
        layer.quant_kernel = kernel

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        """``layer``'s float weight ``[out_features, in_features]`` in its model dtype."""
        return self.unpack(layer).dequantize(layer.quant_geometry.dtype)

    def num_groups(self, geometry: LayerGeometry, shard_groups: bool) -> int:
        """Scale/zero rows of this rank: its own groups, or all when they cannot be split."""
        in_features = geometry.in_features if shard_groups else geometry.full_in_features
        if self.group_size == -1:
            return 1
        if shard_groups and geometry.input_split and in_features % self.group_size:
            raise QuantConfigError(
                f"{geometry.prefix}: {in_features} input features per tensor-parallel rank is "
                f"not a whole number of groups of {self.group_size}")
        return -(-in_features // self.group_size)

    def check_packable(self, geometry: LayerGeometry, features: int, what: str) -> None:
        pack = 32 // self.bits
        if features % pack:
            raise QuantConfigError(f"{geometry.prefix}: {what} {features} is not a multiple "
                                   f"of {pack}, so {self.bits}-bit values cannot be packed")
