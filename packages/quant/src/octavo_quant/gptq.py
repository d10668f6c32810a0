"""GPTQ checkpoints as auto-gptq and gptqmodel write them (``quant_method: "gptq"``).

Per linear layer (``in`` input and ``out`` output features, ``G`` groups, ``pack = 32 // bits``):

- ``qweight [in / pack, out]`` int32, packed along the input features;
- ``qzeros [G, out / pack]`` int32, packed along the output features; v1 stores zero - 1;
- ``scales [G, out]`` (float16 as written, any float accepted);
- ``g_idx [in]`` int32, the group of each input feature (arbitrary with ``desc_act``;
  optional: without it, feature ``i`` is in group ``i // group_size``);
- ``bias [out]`` when the layer has one (created by the linear layer itself).

With a row-parallel split the groups go with the input features, unless ``desc_act`` (or a
group size of -1) ties any feature to any group: then every rank holds all scales and zeros.
The shards of a merged layer (q/k/v, gate/up) must share one ``g_idx``.
"""

from __future__ import annotations

import torch
from torch import nn

from octavo_quant.config import GPTQConfig, QuantConfigError
from octavo_quant.method import GroupQuantMethod, LayerGeometry, QuantParam
from octavo_quant.packing import gptq_v1_zeros_to_v2, pack_factor, unpack_cols, unpack_rows
from octavo_quant.unpacked import UnpackedWeight

G_IDX_ABSENT = -1  # g_idx's fill until the checkpoint provides one


class GPTQMethod(GroupQuantMethod):
    """GPTQ linear layers: ``W = scales[g_idx] * (q - zero[g_idx])``."""

    name = "gptq"

    config_class = GPTQConfig

    def _shard_groups(self, geometry: LayerGeometry) -> bool:
        return not (self.config.desc_act or self.group_size == -1)

    def params(self, geometry: LayerGeometry) -> list[QuantParam]:
        pack = pack_factor(self.bits)
        self.check_packable(geometry, geometry.in_features, "input features")
        self.check_packable(geometry, geometry.out_features, "output features")
        shard_groups = self._shard_groups(geometry)
        groups = self.num_groups(geometry, shard_groups)
        group_dim = 0 if shard_groups else None
        inp, out = geometry.in_features, geometry.out_features
        return [
            QuantParam("qweight", (inp // pack, out), torch.int32,
                       {"input_dim": 0, "output_dim": 1, "packed_dim": 0, "pack_factor": pack}),
            QuantParam("qzeros", (groups, out // pack), torch.int32,
                       {"input_dim": group_dim, "output_dim": 1, "packed_dim": 1,
                        "pack_factor": pack}),
            QuantParam("scales", (groups, out), geometry.dtype,
                       {"input_dim": group_dim, "output_dim": 1}),
            QuantParam("g_idx", (inp,), torch.int32,
                       {"input_dim": 0, "output_dim": None, "optional": True},
                       fill=G_IDX_ABSENT),
        ]

    def create_weights(self, layer, in_features, out_features, dtype, device):
        super().create_weights(layer, in_features, out_features, dtype, device)
        layer.g_idx.weight_loader = _shared_g_idx_loader(layer)

    def unpack(self, layer: nn.Module) -> UnpackedWeight:
        geometry: LayerGeometry = layer.quant_geometry
        zeros_words = layer.qzeros.data
        if self.config.checkpoint_format == "gptq":
            zeros_words = gptq_v1_zeros_to_v2(zeros_words, self.bits)
        return UnpackedWeight(qweight=unpack_rows(layer.qweight.data, self.bits),
                              zeros=unpack_cols(zeros_words, self.bits),
                              scales=layer.scales.data, g_idx=self._g_idx(layer, geometry),
                              bits=self.bits)

    def _g_idx(self, layer: nn.Module, geometry: LayerGeometry) -> torch.Tensor:
        g_idx = layer.g_idx.data.to(torch.int64)
        num_groups = layer.scales.shape[0]
        if bool((g_idx == G_IDX_ABSENT).all()):
            if self.config.desc_act:
                raise QuantConfigError(f"{geometry.prefix}: the checkpoint has desc_act but no "
                                       "g_idx tensor")
            size = self.group_size if self.group_size != -1 else geometry.in_features
            return torch.arange(geometry.in_features, device=g_idx.device) // size
        if self._shard_groups(geometry) and geometry.input_split:
            g_idx = g_idx - geometry.tp_rank * num_groups  # this rank's own groups
        if bool(((g_idx < 0) | (g_idx >= num_groups)).any()):
            raise QuantConfigError(f"{geometry.prefix}.g_idx: group indices outside "
                                   f"[0, {num_groups}) for this layer's scales")
        return g_idx


def _shared_g_idx_loader(layer: nn.Module):
    """A ``g_idx`` loader that checks every shard of a merged layer brings the same ``g_idx``."""

    def load(param: torch.Tensor, loaded: torch.Tensor, *shard_id) -> None:
        previous = param.data.clone() if getattr(param, "loaded_once", False) else None
        layer.weight_loader(param, loaded, *shard_id)
        if previous is not None and not torch.equal(previous, param.data):
            raise ValueError(f"{layer.prefix}.g_idx: the merged shards have different g_idx "
                             "(quantized with different activation orders), which one fused "
                             "layer cannot hold")
        param.loaded_once = True

    return load
