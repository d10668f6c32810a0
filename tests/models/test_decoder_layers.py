"""The pieces the decoder families share: LayerNorm, activations by HF name, fused-QKV
layout transforms, and name templates."""

from __future__ import annotations

import pytest
import torch
from transformers.activations import ACT2FN

from octavo.layers import Activation, LayerNorm
from octavo_models.weight_map import WeightRule, conv1d_to_linear, grouped_qkv_to_merged


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_equals_torch(bias):
    torch.manual_seed(0)
    ref = torch.nn.LayerNorm(24, eps=1e-6, bias=bias)
    with torch.no_grad():
        ref.weight.normal_()
        if bias:
            ref.bias.normal_()
    norm = LayerNorm(24, 1e-6, bias=bias)
    norm.weight.weight_loader(norm.weight, ref.weight.detach())
    if bias:
        norm.bias.weight_loader(norm.bias, ref.bias.detach())
    x = torch.randn(5, 24) * 3 + 1
    torch.testing.assert_close(norm(x), ref(x))
    assert (norm.bias is None) != bias


@pytest.mark.parametrize("name", ["gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu",
                                  "silu"])
def test_activation_equals_hf(name):
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(Activation(name)(x), ACT2FN[name](x), atol=1e-6, rtol=1e-5)


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="unsupported activation 'mish'"):
        Activation("mish")


def _fused_per_group(q, k, v, num_kv_heads):
    """Build a grouped fused tensor ``[KH, group + 2, D, ...]`` from separate q, k, v."""
    group = q.shape[0] // k.shape[0]
    d = k.shape[0] // num_kv_heads
    q = q.view(num_kv_heads, group, d, *q.shape[1:])
    k = k.view(num_kv_heads, 1, d, *k.shape[1:])
    v = v.view(num_kv_heads, 1, d, *v.shape[1:])
    return torch.cat([q, k, v], dim=1).reshape(-1, *q.shape[3:])


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)],
                         ids=["per-head-neox", "grouped-falcon", "one-group"])
@pytest.mark.parametrize("shape", [(8,), ()], ids=["weight", "bias"])
def test_grouped_qkv_becomes_q_k_v(heads, kv_heads, shape):
    d = 3
    q = torch.randn(heads * d, *shape)
    k = torch.randn(kv_heads * d, *shape)
    v = torch.randn(kv_heads * d, *shape)
    fused = _fused_per_group(q, k, v, kv_heads)
    merged = grouped_qkv_to_merged(heads, kv_heads, d)(fused)
    torch.testing.assert_close(merged, torch.cat([q, k, v]))


def test_grouped_qkv_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="fused qkv has 10 rows, expected 12"):
        grouped_qkv_to_merged(2, 1, 3)(torch.zeros(10, 4))


def test_conv1d_weights_are_transposed_and_biases_kept():
    w, b = torch.randn(4, 6), torch.randn(6)
    assert torch.equal(conv1d_to_linear(w), w.t()) and torch.equal(conv1d_to_linear(b), b)


def test_rule_templates_map_both_ways():
    rule = WeightRule("transformer.h.{i}.ln_1.{p}", "layers.{i}.attn_norm.{p}")
    match = rule.match_source("transformer.h.12.ln_1.bias")
    assert match and match.groupdict() == {"i": "12", "p": "bias"}
    assert rule.match_source("transformer.h.x.ln_1.bias") is None
    assert rule.match_source("transformer.h.1.ln_1.qweight")  # a quantization method's tensor
    assert rule.match_source("transformer.h.1.ln_1.weight.extra") is None
    assert rule.source_of("layers.3.attn_norm.weight") == "transformer.h.3.ln_1.weight"
    assert rule.source_of("layers.3.mlp_norm.weight") is None
