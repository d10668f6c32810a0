"""Parallel linear layers: shard placement, fused q/k/v and gate/up, simulated tensor parallel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from octavo.layers import linear as linear_module
from octavo.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from octavo.layers.quantization import QuantizationMethod, set_weight_attrs
from octavo.layers.weight_loading import process_weights_after_loading
from octavo.modeling import ParallelConfig

GEN = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=GEN)


@pytest.fixture
def no_collectives(monkeypatch):
    """Simulate ranks in one process: collectives become identities, tests combine by hand."""
    monkeypatch.setattr(linear_module, "all_reduce", lambda x, parallel: x)
    monkeypatch.setattr(linear_module, "all_gather", lambda x, parallel, dim=-1: x)


def tp(rank: int, size: int = 2) -> ParallelConfig:
    return ParallelConfig(tensor_parallel_size=size, rank=rank)


@pytest.mark.parametrize("bias", [False, True])
def test_qkv_fuses_hf_projections(bias):
    hidden, head, heads, kv_heads = 24, 8, 4, 2
    wq, wk, wv = randn(heads * head, hidden), randn(kv_heads * head, hidden), randn(16, hidden)
    bq, bk, bv = randn(heads * head), randn(kv_heads * head), randn(16)
    layer = QKVParallelLinear(hidden, head, heads, kv_heads, bias=bias)
    for shard, w, b in (("q", wq, bq), ("k", wk, bk), ("v", wv, bv)):
        layer.weight.weight_loader(layer.weight, w, shard)
        if bias:
            layer.bias.weight_loader(layer.bias, b, shard)
    x = randn(5, hidden)
    expected = torch.cat([F.linear(x, w, b if bias else None)
                          for w, b in ((wq, bq), (wk, bk), (wv, bv))], -1)
    torch.testing.assert_close(layer(x), expected)
    assert (layer.q_size, layer.kv_size) == (32, 16)


def test_gate_up_from_separate_or_fused_checkpoint():
    gate, up = randn(12, 8), randn(12, 8)
    separate = MergedColumnParallelLinear(8, [12, 12])
    separate.weight.weight_loader(separate.weight, gate, 0)
    separate.weight.weight_loader(separate.weight, up, 1)
    fused = MergedColumnParallelLinear(8, [12, 12])
    fused.weight.weight_loader(fused.weight, torch.cat((gate, up)))
    x = randn(3, 8)
    expected = torch.cat((F.linear(x, gate), F.linear(x, up)), -1)
    torch.testing.assert_close(separate(x), expected)
    torch.testing.assert_close(fused(x), expected)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_qkv_tensor_parallel_shards(no_collectives, kv_heads):
    """Rank r holds q heads 2r, 2r+1 and its KV heads (replicated when kv_heads < ranks)."""
    hidden, head, heads, world = 16, 4, 4, 2
    wq, wk, wv = randn(heads * head, hidden), randn(kv_heads * head, hidden), \
        randn(kv_heads * head, hidden)
    x = randn(3, hidden)
    q_all = F.linear(x, wq).view(3, heads, head)
    k_all = F.linear(x, wk).view(3, kv_heads, head)
    v_all = F.linear(x, wv).view(3, kv_heads, head)
    for rank in range(world):
        layer = QKVParallelLinear(hidden, head, heads, kv_heads, parallel=tp(rank, world))
        for shard, w in (("q", wq), ("k", wk), ("v", wv)):
            layer.weight.weight_loader(layer.weight, w, shard)
        q, k, v = layer(x).split([layer.q_size, layer.kv_size, layer.kv_size], -1)
        kv_per_rank = max(kv_heads // world, 1)
        kv_lo = rank * kv_heads // world  # first KV head of this rank
        torch.testing.assert_close(q.view(3, 2, head), q_all[:, 2 * rank:2 * rank + 2])
        torch.testing.assert_close(k.view(3, kv_per_rank, head),
                                   k_all[:, kv_lo:kv_lo + kv_per_rank])
        torch.testing.assert_close(v.view(3, kv_per_rank, head),
                                   v_all[:, kv_lo:kv_lo + kv_per_rank])


def test_column_row_tensor_parallel_sum_to_full(no_collectives):
    """An MLP split column-then-row over 2 ranks sums to the unsplit MLP (bias counted once)."""
    gate, up, down, down_bias = randn(12, 8), randn(12, 8), randn(8, 12), randn(8)
    x = randn(4, 8)
    h = F.silu(F.linear(x, gate)) * F.linear(x, up)
    expected = F.linear(h, down, down_bias)
    total = torch.zeros_like(expected)
    for rank in range(2):
        gate_up = MergedColumnParallelLinear(8, [12, 12], parallel=tp(rank))
        gate_up.weight.weight_loader(gate_up.weight, gate, 0)
        gate_up.weight.weight_loader(gate_up.weight, up, 1)
        down_proj = RowParallelLinear(12, 8, bias=True, parallel=tp(rank), reduce_results=False)
        down_proj.weight.weight_loader(down_proj.weight, down)
        down_proj.bias.weight_loader(down_proj.bias, down_bias)
        g, u = gate_up(x).chunk(2, -1)  # [4, 6] each: this rank's slice
        torch.testing.assert_close(g, F.linear(x, gate[6 * rank:6 * rank + 6]))
        total += down_proj(F.silu(g) * u)
    torch.testing.assert_close(total, expected)


def test_column_parallel_slices_rows(no_collectives):
    w, b = randn(10, 6), randn(10)
    x = randn(2, 6)
    outs = []
    for rank in range(2):
        layer = ColumnParallelLinear(6, 10, bias=True, parallel=tp(rank))
        layer.weight.weight_loader(layer.weight, w)
        layer.bias.weight_loader(layer.bias, b)
        outs.append(layer(x))
    torch.testing.assert_close(torch.cat(outs, -1), F.linear(x, w, b))


def test_shape_mismatch_is_a_clear_error():
    layer = QKVParallelLinear(16, 4, 4, 2)
    with pytest.raises(ValueError, match="shard 'k'.*8 long"):
        layer.weight.weight_loader(layer.weight, randn(16, 16), "k")
    with pytest.raises(ValueError, match="shape"):
        layer.weight.weight_loader(layer.weight, randn(8, 15), "k")
    row = ReplicatedLinear(4, 4)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        row.weight.weight_loader(row.weight, randn(4, 5))
    with pytest.raises(ValueError, match="divisible"):
        ColumnParallelLinear(4, 5, parallel=tp(0))


class TransposedPackedMethod(QuantizationMethod):
    """A stand-in quantized format: ``qweight [in, out / 2]`` (two values per element, packed
    along the output dim, as AWQ does) and ``scales [out]``. ``apply`` unpacks by repeating."""

    name = "fake-packed"

    def __init__(self):
        self.processed = []

    def create_weights(self, layer, in_features, out_features, dtype, device):
        layer.qweight = nn.Parameter(torch.empty(in_features, out_features // 2, device=device),
                                     requires_grad=False)
        set_weight_attrs(layer.qweight, {"input_dim": 0, "output_dim": 1, "packed_dim": 1,
                                         "pack_factor": 2})
        layer.scales = nn.Parameter(torch.empty(out_features, device=device),
                                    requires_grad=False)
        set_weight_attrs(layer.scales, {"output_dim": 0, "input_dim": None})

    def apply(self, layer, x, bias=None):
        w = layer.qweight.repeat_interleave(2, dim=1) * layer.scales  # [in, out]
        out = x @ w
        return out if bias is None else out + bias

    def for_layer(self, prefix):
        return None if prefix.endswith("skip") else self

    def process_weights_after_loading(self, layer):
        self.processed.append(layer.prefix)


def test_merged_loader_honours_output_dim_and_packing():
    method = TransposedPackedMethod()
    layer = MergedColumnParallelLinear(3, [4, 6], quant_method=method, prefix="mlp.gate_up")
    assert layer.qweight.shape == (3, 5) and layer.scales.shape == (10,)
    q0, q1 = torch.arange(6.).view(3, 2), 100 + torch.arange(9.).view(3, 3)
    layer.qweight.weight_loader(layer.qweight, q0, 0)
    layer.qweight.weight_loader(layer.qweight, q1, 1)
    layer.scales.weight_loader(layer.scales, torch.full((4,), 2.0), 0)
    layer.scales.weight_loader(layer.scales, torch.full((6,), 3.0), 1)
    torch.testing.assert_close(layer.qweight.data, torch.cat((q0, q1), 1))
    x = randn(2, 3)
    expected = torch.cat((x @ q0.repeat_interleave(2, 1) * 2, x @ q1.repeat_interleave(2, 1) * 3),
                         -1)
    torch.testing.assert_close(layer(x), expected)
    process_weights_after_loading(layer)
    assert method.processed == ["mlp.gate_up"]


def test_for_layer_can_leave_a_layer_unquantized():
    layer = RowParallelLinear(4, 4, quant_method=TransposedPackedMethod(), prefix="x.skip")
    assert layer.quant_method.name == "none" and layer.weight.shape == (4, 4)
