"""Quantized tensors load into tensor-parallel shards: each rank's dequantized weight is its
slice of the whole layer's (packed dims, groups split across ranks or kept whole, merged
shards)."""

from __future__ import annotations

import octavo_quant_test_packer as packer  # registered by tests/quant/conftest.py
import pytest
import torch

from octavo.layers import MergedColumnParallelLinear, RowParallelLinear
from octavo.modeling import ParallelConfig
from octavo_quant.awq import AWQMethod
from octavo_quant.gptq import GPTQMethod

Recipe = packer.Recipe
TP = 2
RECIPES = [Recipe(group_size=32, sym=False), Recipe(desc_act=True, sym=False),
           Recipe(group_size=-1), Recipe(bits=8, group_size=64), Recipe(method="awq")]
IDS = ["gptq-g32", "gptq-desc-act", "gptq-per-row", "gptq-8bit", "awq"]


def method_of(recipe):
    cls = AWQMethod if recipe.method == "awq" else GPTQMethod
    return cls.from_config(packer.quant_config(recipe))


def checkpoint(recipe, out_features, in_features, seed):
    torch.manual_seed(seed)
    q = packer.quantize(torch.randn(out_features, in_features), recipe, seed=7)
    write = packer.awq_tensors if recipe.method == "awq" else packer.gptq_tensors
    return write(q, recipe), q.fake_quantized()


def load(layer, tensors, *shard):
    for name, tensor in tensors.items():
        param = getattr(layer, name)
        param.weight_loader(param, tensor, *shard)


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_row_parallel_ranks_hold_their_input_slice(recipe):
    tensors, full = checkpoint(recipe, 64, 256, seed=0)
    for rank in range(TP):
        layer = RowParallelLinear(256, 64, quant_method=method_of(recipe),
                                  parallel=ParallelConfig(TP, rank))
        load(layer, tensors)
        expected = full[:, rank * 128:(rank + 1) * 128]
        torch.testing.assert_close(layer.quant_method.dequantize(layer), expected,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_merged_column_parallel_ranks_hold_their_slice_of_each_shard(recipe):
    sizes = (64, 128)
    parts = [checkpoint(recipe, size, 96, seed=k) for k, size in enumerate(sizes)]
    for rank in range(TP):
        layer = MergedColumnParallelLinear(96, sizes, quant_method=method_of(recipe),
                                           parallel=ParallelConfig(TP, rank))
        for shard, (tensors, _) in enumerate(parts):
            load(layer, tensors, shard)
        expected = torch.cat([fake.chunk(TP)[rank] for _, fake in parts])
        torch.testing.assert_close(layer.quant_method.dequantize(layer), expected,
                                   rtol=0, atol=0)
