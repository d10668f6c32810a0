"""AWQ GEMM checkpoints as AutoAWQ (and gptqmodel's AWQ export) write them.

Per linear layer (``in`` input and ``out`` output features, ``G = in / group_size``):

- ``qweight [in, out / 8]`` int32, packed along the output features in AutoAWQ's interleaved
  order (:data:`octavo_quant.packing.AWQ_PACK_ORDER`);
- ``qzeros [G, out / 8]`` int32, packed the same way; the true zero points;
- ``scales [G, out]`` (float16 as written).

Layers named in ``modules_to_not_convert`` (matched as a substring of the layer's name, as
vLLM does) load as dense layers.
"""

from __future__ import annotations

import torch
from torch import nn

from octavo.layers.quantization import QuantizationMethod
from octavo_quant.config import AWQConfig, QuantConfigError
from octavo_quant.method import GroupQuantMethod, LayerGeometry, QuantParam
from octavo_quant.packing import pack_factor, unpack_awq_cols
from octavo_quant.unpacked import UnpackedWeight


class AWQMethod(GroupQuantMethod):
    """AWQ GEMM linear layers: ``W = scales[i // group_size] * (q - zero[i // group_size])``."""

    name = "awq"

    config_class = AWQConfig

    def for_layer(self, prefix: str) -> QuantizationMethod | None:
        if any(name in prefix for name in self.config.modules_to_not_convert):
            return None
        return self

    def params(self, geometry: LayerGeometry) -> list[QuantParam]:
        pack = pack_factor(self.bits)
        self.check_packable(geometry, geometry.out_features, "output features")
        if geometry.in_features % self.group_size:
            raise QuantConfigError(f"{geometry.prefix}: {geometry.in_features} input features "
                                   f"are not a whole number of groups of {self.group_size}")
        groups = self.num_groups(geometry, shard_groups=True)
        inp, out = geometry.in_features, geometry.out_features
        packed_out = {"output_dim": 1, "packed_dim": 1, "pack_factor": pack}
        return [QuantParam("qweight", (inp, out // pack), torch.int32,
                           {"input_dim": 0, **packed_out}),
                QuantParam("qzeros", (groups, out // pack), torch.int32,
                           {"input_dim": 0, **packed_out}),
                QuantParam("scales", (groups, out), geometry.dtype,
                           {"input_dim": 0, "output_dim": 1})]

    def unpack(self, layer: nn.Module) -> UnpackedWeight:
        geometry: LayerGeometry = layer.quant_geometry
        g_idx = torch.arange(geometry.in_features, device=layer.qweight.device) // self.group_size
        return UnpackedWeight(qweight=unpack_awq_cols(layer.qweight.data, self.bits),
                              zeros=unpack_awq_cols(layer.qzeros.data, self.bits),
                              scales=layer.scales.data, g_idx=g_idx, bits=self.bits)
