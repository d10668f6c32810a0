"""RMSNorm, gated activations, vocab embedding / LM head and the attention layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from octavo.attention.torch_backend import TorchAttentionBackend, paged_attention_reference
from octavo.layers import embedding as embedding_module
from octavo.layers.activation import GatedActivation, SiluAndMul
from octavo.layers.attention import Attention
from octavo.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from octavo.layers.layer_ops import LAYER_OPS_ENV
from octavo.layers.norm import RMSNorm
from octavo.modeling import ParallelConfig
from octavo.testing.model_suite import build_attention_metadata

GEN = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=GEN)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_hf(dtype, monkeypatch):
    # The torch code, the oracle of every faster RMSNorm, equals HF's bit for bit (a C++ op
    # sums the squares in another order: tests/kernels_cpu compares it with this code).
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")
    weight = 1 + 0.1 * randn(48)
    hf = LlamaRMSNorm(48, eps=1e-5).to(dtype)
    hf.weight.data.copy_(weight)
    norm = RMSNorm(48, 1e-5, dtype=dtype)
    norm.weight.weight_loader(norm.weight, weight)
    x, residual = randn(5, 48).to(dtype), randn(5, 48).to(dtype)
    torch.testing.assert_close(norm(x), hf(x), rtol=0, atol=0)
    out, new_residual = norm(x, residual)
    torch.testing.assert_close(new_residual, residual + x, rtol=0, atol=0)
    torch.testing.assert_close(out, hf(residual + x), rtol=0, atol=0)


def test_silu_and_mul():
    x = randn(3, 2, 10)
    torch.testing.assert_close(SiluAndMul()(x), F.silu(x[..., :5]) * x[..., 5:])
    torch.testing.assert_close(GatedActivation("gelu_pytorch_tanh")(x),
                               F.gelu(x[..., :5], approximate="tanh") * x[..., 5:])
    with pytest.raises(ValueError, match="unsupported gated activation 'relu'"):
        GatedActivation("relu")


def test_embedding_and_tied_lm_head():
    table = randn(11, 6)
    emb = VocabParallelEmbedding(11, 6)
    emb.weight.weight_loader(emb.weight, table)
    ids = torch.tensor([0, 10, 3, 3])
    torch.testing.assert_close(emb(ids), table[ids])
    head = ParallelLMHead(11, 6, tied_to=emb)
    assert head.weight is emb.weight
    hidden = randn(2, 6).to(torch.bfloat16)
    emb_bf16 = VocabParallelEmbedding(11, 6, dtype=torch.bfloat16)
    emb_bf16.weight.weight_loader(emb_bf16.weight, table)
    logits = ParallelLMHead(11, 6, tied_to=emb_bf16).compute_logits(hidden)
    assert logits.dtype == torch.float32 and logits.shape == (2, 11)
    with pytest.raises(ValueError, match="vocab_size is 11"):
        emb.weight.weight_loader(emb.weight, randn(12, 6))


def test_vocab_parallel_shards(monkeypatch):
    """Two simulated ranks (vocab 11 -> 6 rows each, one padding row): lookups sum to the full
    embedding, gathered logits equal the full LM head."""
    monkeypatch.setattr(embedding_module, "all_reduce", lambda x, parallel: x)
    table = randn(11, 6)
    ids = torch.tensor([0, 5, 6, 10])
    hidden = randn(3, 6)
    total, shards = torch.zeros(4, 6), []
    for rank in range(2):
        parallel = ParallelConfig(tensor_parallel_size=2, rank=rank)
        emb = VocabParallelEmbedding(11, 6, parallel=parallel)
        emb.weight.weight_loader(emb.weight, table)
        assert emb.weight.shape == (6, 6)
        total += emb(ids)
        shards.append(F.linear(hidden, emb.weight))
    torch.testing.assert_close(total, table[ids])
    torch.testing.assert_close(torch.cat(shards, -1)[:, :11], F.linear(hidden, table))
    assert torch.all(shards[1][:, -1] == 0)  # the padding row


def test_attention_layer_wraps_backend():
    heads, kv_heads, d, block = 4, 2, 8, 4
    attn = Attention(heads, d, kv_heads, d ** -0.5, TorchAttentionBackend, sliding_window=3)
    assert attn.impl.sliding_window == 3 and attn.impl.num_kv_heads == kv_heads
    caches = (torch.zeros(6, block, kv_heads, d), torch.zeros(6, block, kv_heads, d))
    meta = build_attention_metadata([0, 0], [5, 2], [[4, 1], [2]], block)
    q, k, v = randn(7, heads, d), randn(7, kv_heads, d), randn(7, kv_heads, d)
    out = attn(q, k, v, caches, meta)
    assert out.shape == (7, heads * d)
    expected = paged_attention_reference(q, *caches, meta, d ** -0.5, sliding_window=3)
    torch.testing.assert_close(out, expected.reshape(7, -1))
    # the keys landed in the slots the block tables name
    torch.testing.assert_close(caches[0][1, 0], k[4])  # request 0, position 4 -> block 1
    torch.testing.assert_close(caches[0][2, 1], k[6])  # request 1, position 1 -> block 2


def test_build_attention_metadata_slots():
    meta = build_attention_metadata([3, 0], [2, 3], [[7, 2, 9], [5, 3]], block_size=2)
    assert meta.slot_mapping.tolist() == [5, 18, 10, 11, 6]
    assert meta.query_start_loc_cpu == [0, 2, 5] and meta.seq_lens_cpu == [5, 3]
    assert meta.block_tables.tolist() == [[7, 2, 9], [5, 3, 0]]
    assert (meta.max_query_len, meta.max_seq_len) == (3, 5)
    with pytest.raises(ValueError, match="too short"):
        build_attention_metadata([3], [2], [[7, 2]], block_size=2)


def test_layers_choose_their_layer_ops_once_per_dtype(monkeypatch):
    """RMSNorm and GatedActivation look their faster ops up at the first forward in a dtype
    and keep them (a lookup per call cost as much as a small op); other dtypes look again."""
    from octavo.layers import activation, norm

    looked_up = []

    def fake_find(op, x):
        looked_up.append((op, x.dtype))
        return lambda *args: ("fast", op)

    monkeypatch.setattr(norm, "find_layer_op", fake_find)
    monkeypatch.setattr(activation, "find_layer_op", fake_find)
    rms, gated, gelu = RMSNorm(4), GatedActivation("silu"), GatedActivation("gelu_pytorch_tanh")
    x = torch.ones(2, 4)
    for _ in range(3):
        assert rms(x) == ("fast", "rms_norm")
        assert rms(x, x) == ("fast", "fused_add_rms_norm")
        assert gated(x) == ("fast", "silu_and_mul")
        torch.testing.assert_close(gelu(x), F.gelu(x[..., :2], approximate="tanh") * x[..., 2:])
    assert looked_up == [("rms_norm", torch.float32), ("fused_add_rms_norm", torch.float32),
                         ("silu_and_mul", torch.float32)]
    assert gated(x.double()) == ("fast", "silu_and_mul")
    assert looked_up[-1] == ("silu_and_mul", torch.float64)


def test_attention_chooses_its_rotary_once_per_dtype(monkeypatch):
    """forward_qkv looks the rotary op up at its first forward in a dtype and keeps it; the
    result equals the separate rotary + attention path."""
    from octavo.layers import layer_ops
    from octavo.layers.rotary import apply_rotary_torch

    looked_up = []

    def fake_find(op, x):
        looked_up.append((op, x.dtype))
        return apply_rotary_torch

    monkeypatch.setattr(layer_ops, "find_layer_op", fake_find)
    heads, kv_heads, d, block = 4, 2, 8, 4
    attn = Attention(heads, d, kv_heads, d ** -0.5, TorchAttentionBackend)
    meta = build_attention_metadata([0], [3], [[1]], block)
    cos, sin = randn(3, d // 2), randn(3, d // 2)
    for _ in range(3):
        caches = (torch.zeros(2, block, kv_heads, d), torch.zeros(2, block, kv_heads, d))
        qkv = randn(3, (heads + 2 * kv_heads) * d)
        out = attn.forward_qkv(qkv, (cos, sin), caches, meta)
        qk = apply_rotary_torch(qkv[:, :(heads + kv_heads) * d].view(3, heads + kv_heads, d),
                                cos, sin)
        v = qkv[:, (heads + kv_heads) * d:].view(3, kv_heads, d)
        expected = paged_attention_reference(qk[:, :heads], *caches, meta, d ** -0.5)
        torch.testing.assert_close(out, expected.reshape(3, -1))
        torch.testing.assert_close(caches[1][1, :3], v)
    assert looked_up == [("rotary", torch.float32)]
