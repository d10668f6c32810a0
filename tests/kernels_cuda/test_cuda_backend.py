"""The CUDA backend on a GPU: the conformance suite, split-KV, long contexts and CUDA graphs.

Every test here is marked ``gpu`` and skips without CUDA. The first one to construct a
backend triggers the JIT build of the kernels (see octavo_cuda.build).
"""

from __future__ import annotations

import pytest
import torch

from octavo.attention.torch_backend import TorchAttentionBackend
from octavo.testing.attention_suite import (
    DEFAULT_TOLERANCES,
    AttentionBackendSuite,
    alibi_slopes,
    make_paged_batch,
)
from octavo_cuda import ops
from octavo_cuda.backend import CudaAttentionBackend

pytestmark = pytest.mark.gpu


class TestCudaBackend(AttentionBackendSuite):
    backend_cls = CudaAttentionBackend
    device = "cuda"
    head_sizes = (64, 80, 96, 128, 256)


class TestCudaBackendSplitKV(AttentionBackendSuite):
    """The suite again with KV partitions forced to 32 tokens: the split + combine path."""

    backend_cls = CudaAttentionBackend
    device = "cuda"

    def make_backend(self, num_heads, head_size, num_kv_heads, **kwargs):
        return CudaAttentionBackend(num_heads, head_size, num_kv_heads, head_size ** -0.5,
                                    partition_size=32, **kwargs)


class TestCudaBackendCudaCoresOnly(AttentionBackendSuite):
    """fp16/bf16 prefill chunks on the CUDA-core kernel too (tensor cores off)."""

    backend_cls = CudaAttentionBackend
    device = "cuda"
    dtypes = (torch.float16, torch.bfloat16)

    def make_backend(self, num_heads, head_size, num_kv_heads, **kwargs):
        return CudaAttentionBackend(num_heads, head_size, num_kv_heads, head_size ** -0.5,
                                    tensor_cores=False, **kwargs)


def compare(query_lens, seq_lens, *, dtype=torch.float16, heads=(8, 2), head_size=128,
            block_size=16, seed=0, partition_size=0, tensor_cores=True, **kwargs):
    """Run the CUDA backend and the torch reference on one batch; compare output and cache."""
    num_heads, num_kv_heads = heads
    batch = make_paged_batch(query_lens, seq_lens, num_heads=num_heads,
                             num_kv_heads=num_kv_heads, head_size=head_size,
                             block_size=block_size, dtype=dtype, device="cuda",
                             generator=torch.Generator().manual_seed(seed))
    slopes = kwargs.pop("alibi_slopes", None)
    if slopes is not None:
        kwargs["alibi_slopes"] = slopes.cuda()
    scale = head_size ** -0.5
    ref_k, ref_v = batch.key_cache.clone(), batch.value_cache.clone()
    expected = TorchAttentionBackend(num_heads, head_size, num_kv_heads, scale, **kwargs).forward(
        batch.query, batch.key, batch.value, ref_k, ref_v, batch.metadata)
    backend = CudaAttentionBackend(num_heads, head_size, num_kv_heads, scale,
                                   partition_size=partition_size, tensor_cores=tensor_cores,
                                   **kwargs)
    key_cache, value_cache = batch.key_cache.clone(), batch.value_cache.clone()
    out = backend.forward(batch.query, batch.key, batch.value, key_cache, value_cache,
                          batch.metadata)
    torch.cuda.synchronize()
    n = batch.num_tokens
    torch.testing.assert_close(key_cache, ref_k, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(value_cache, ref_v, atol=0, rtol=0, equal_nan=True)
    atol, rtol = DEFAULT_TOLERANCES[dtype]
    torch.testing.assert_close(out[:n], expected[:n], atol=atol, rtol=rtol)
    return batch


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_long_decodes_split_automatically(dtype):
    """3 requests x 8 KV heads = 24 blocks on 132 SMs: the context is split (test_plan_op)."""
    compare([1, 1, 1], [4096, 3000, 17], dtype=dtype, heads=(32, 8))


def test_large_decode_batch():
    lens = torch.randint(1, 600, (200,), generator=torch.Generator().manual_seed(1)).tolist()
    compare([1] * len(lens), lens, dtype=torch.bfloat16, heads=(8, 2), seed=1)


@pytest.mark.parametrize("tensor_cores", [True, False], ids=["tc", "cuda_cores"])
@pytest.mark.parametrize("sliding_window", [None, 256])
def test_long_prefill_and_chunk(sliding_window, tensor_cores):
    compare([1000, 300, 1], [1000, 1000, 777], heads=(16, 4), sliding_window=sliding_window,
            tensor_cores=tensor_cores, seed=2)


@pytest.mark.parametrize("head_size", [64, 80, 96, 128, 256])
def test_tensor_core_prefill_head_sizes_bf16(head_size):
    compare([700, 17, 1, 15], [700, 900, 40, 15], dtype=torch.bfloat16, heads=(12, 4),
            head_size=head_size, seed=8)


@pytest.mark.parametrize("heads", [(32, 32), (32, 4), (64, 1), (9, 3)],
                         ids=lambda h: f"h{h[0]}kv{h[1]}")
def test_head_layouts_at_scale(heads):
    compare([1, 200, 1, 37], [513, 700, 64, 37], heads=heads, head_size=64, seed=3)


def test_alibi_with_window_and_soft_cap_split():
    compare([1, 50, 1], [900, 400, 3], heads=(8, 8), alibi_slopes=alibi_slopes(8),
            sliding_window=300, logits_soft_cap=30.0, partition_size=128, seed=4)


def test_odd_block_size():
    compare([1, 33, 1], [200, 90, 1], block_size=7, head_size=96, seed=5)


def test_cuda_graph_replay_reads_metadata_from_device():
    """Captured once, replayed on new contents of the same tensors: nothing is baked in."""
    lens = [300, 37, 64, 5]
    kwargs = dict(num_heads=8, num_kv_heads=2, head_size=128, block_size=16,
                  dtype=torch.float16, device="cuda")
    static = make_paged_batch([1] * 4, lens, generator=torch.Generator().manual_seed(6),
                              **kwargs)
    backend = CudaAttentionBackend(8, 128, 2, 128 ** -0.5)
    args = (static.query, static.key, static.value, static.key_cache, static.value_cache,
            static.metadata)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        backend.forward(*args)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(*args)

    fresh = make_paged_batch([1] * 4, lens, generator=torch.Generator().manual_seed(7),
                             **kwargs)
    for name in ("query", "key", "value", "key_cache", "value_cache"):
        getattr(static, name).copy_(getattr(fresh, name))
    for name in ("slot_mapping", "block_tables", "seq_lens", "query_start_loc"):
        getattr(static.metadata, name).copy_(getattr(fresh.metadata, name))
    graph.replay()
    torch.cuda.synchronize()
    ref_k, ref_v = fresh.key_cache.clone(), fresh.value_cache.clone()
    expected = TorchAttentionBackend(8, 128, 2, 128 ** -0.5).forward(
        fresh.query, fresh.key, fresh.value, ref_k, ref_v, fresh.metadata)
    torch.testing.assert_close(static.key_cache, ref_k, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(out[:4], expected[:4], atol=3e-3, rtol=3e-3)


def test_bad_inputs_raise_clear_errors():
    batch = make_paged_batch([1, 3], [9, 3], num_heads=4, num_kv_heads=2, head_size=64,
                             block_size=8, dtype=torch.float16, device="cuda")
    backend = CudaAttentionBackend(4, 64, 2, 0.125)
    md = batch.metadata
    md.block_tables = md.block_tables.long()
    with pytest.raises(RuntimeError, match="int32"):
        backend.forward(batch.query, batch.key, batch.value, batch.key_cache,
                        batch.value_cache, md)
    with pytest.raises(RuntimeError, match="share one dtype"):
        ops.reshape_and_cache(batch.key.float(), batch.value.float(), batch.key_cache,
                              batch.value_cache, md.slot_mapping)


def test_plan_op():
    plan = ops.attention_plan(num_tokens=10, num_seqs=3, num_heads=12, num_kv_heads=1,
                              max_query_len=8, max_seq_len=100, partition_size=64, num_sms=132)
    assert plan == {"heads_per_block": 8, "queries_per_block": 1, "head_chunks": 2,
                    "num_q_tiles": 10, "num_splits": 2, "partition_size": 64, "tc": 0,
                    "tc_heads_per_block": 0, "tc_queries_per_block": 0, "tc_head_chunks": 0,
                    "tc_q_tiles": 0}
    plan = ops.attention_plan(num_tokens=100, num_seqs=2, num_heads=8, num_kv_heads=2,
                              max_query_len=99, max_seq_len=300, num_sms=132)
    assert (plan["tc"], plan["tc_heads_per_block"], plan["tc_queries_per_block"]) == (1, 4, 16)
    assert plan["tc_q_tiles"] == 100 // 16 + 2 and plan["queries_per_block"] == 2
    # the long decodes of test_long_decodes_split_automatically, on this GPU
    assert ops.attention_plan(3, 3, 32, 8, 1, 4096)["num_splits"] > 1
