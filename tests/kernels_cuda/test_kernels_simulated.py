"""The octavo_cuda kernels, run by the CPU simulator, against the torch reference.

The simulator compiles the kernels' own C++ (the same source nvcc builds) and runs each
thread block's threads as fibers, with strict barriers and bounds-checked global memory (see
sim/sim_runtime.h). The paged cache is NaN outside what requests own, so a kernel reading a
slot it should not turns the output NaN; unwritten output rows stay NaN.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from octavo.attention.torch_backend import paged_attention_reference, write_kv_cache
from octavo.testing.attention_suite import alibi_slopes, make_paged_batch

TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def run_case(
    sim,
    query_lens: list[int],
    seq_lens: list[int],
    *,
    dtype: torch.dtype = torch.float16,
    heads: tuple[int, int] = (4, 2),
    head_size: int = 64,
    block_size: int = 16,
    pad_tokens: int = 0,
    fused_qkv: bool = False,
    partition_size: int = 0,
    tensor_cores: bool = True,
    num_sms: int = 132,
    seed: int = 0,
    **attn_kwargs,
) -> dict[str, int]:
    """Cache write and attention through the simulator, both checked; returns the plan."""
    num_heads, num_kv_heads = heads
    batch = make_paged_batch(
        query_lens, seq_lens, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_size=head_size, block_size=block_size, dtype=dtype, pad_tokens=pad_tokens,
        fused_qkv=fused_qkv, generator=torch.Generator().manual_seed(seed))
    md = batch.metadata
    ref_k, ref_v = batch.key_cache.clone(), batch.value_cache.clone()
    write_kv_cache(batch.key, batch.value, ref_k, ref_v, md.slot_mapping)
    key_cache, value_cache = batch.key_cache.clone(), batch.value_cache.clone()
    sim.reshape_and_cache(batch.key, batch.value, key_cache, value_cache, md.slot_mapping)
    torch.testing.assert_close(key_cache, ref_k, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(value_cache, ref_v, atol=0, rtol=0, equal_nan=True)

    scale = head_size ** -0.5
    expected = paged_attention_reference(batch.query, ref_k, ref_v, md, scale, **attn_kwargs)
    out, plan = sim.paged_attention(batch.query, key_cache, value_cache, md, scale,
                                    partition_size=partition_size,
                                    tensor_cores=tensor_cores, num_sms=num_sms, **attn_kwargs)
    n = md.num_tokens
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out[:n], expected[:n], atol=atol, rtol=rtol)
    assert torch.isnan(out[n:]).all(), "padding rows were written"
    return plan


@pytest.mark.parametrize("head_size", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixed_batch_dtypes_and_head_sizes(cuda_sim, dtype, head_size):
    plan = run_case(cuda_sim, [1, 13, 1, 6], [45, 37, 2, 6], dtype=dtype, head_size=head_size)
    assert plan["queries_per_block"] == 4 and plan["heads_per_block"] == 2


@pytest.mark.parametrize("heads", [(4, 4), (4, 1), (9, 3), (16, 2), (24, 2), (12, 1)],
                         ids=lambda h: f"h{h[0]}kv{h[1]}")
def test_head_groups(cuda_sim, heads):
    """MHA, MQA and GQA, including groups wider than one block's rows (head chunks)."""
    plan = run_case(cuda_sim, [1, 11, 1], [40, 19, 17], heads=heads, seed=1)
    group = heads[0] // heads[1]
    assert plan["heads_per_block"] == min(group, 8)
    assert plan["head_chunks"] == math.ceil(group / min(group, 8))


@pytest.mark.parametrize("block_size", [1, 5, 16, 32])
def test_block_sizes(cuda_sim, block_size):
    run_case(cuda_sim, [1, 9, 1, 4], [50, 20, 33, 4], block_size=block_size, seed=2)


def test_decode_only(cuda_sim):
    seq_lens = [1, 2, 16, 17, 31, 32, 33, 70]
    plan = run_case(cuda_sim, [1] * len(seq_lens), seq_lens, heads=(8, 2), seed=3)
    assert plan["queries_per_block"] == 1 and plan["num_q_tiles"] == len(seq_lens)
    assert plan["num_splits"] == 1


def test_long_prefill_multi_head(cuda_sim):
    """MHA tiles 8 queries per block: a 70-token prompt spans 9 query tiles, causally."""
    plan = run_case(cuda_sim, [70, 3], [70, 40], heads=(2, 2), block_size=16, seed=4)
    assert plan["queries_per_block"] == 8 and plan["heads_per_block"] == 1


@pytest.mark.parametrize("window", [1, 5, 33])
def test_sliding_window(cuda_sim, window):
    run_case(cuda_sim, [1, 12, 20, 1], [60, 30, 20, 3], sliding_window=window, seed=5)


def test_alibi(cuda_sim):
    run_case(cuda_sim, [1, 10, 7], [50, 25, 7], heads=(6, 2),
             alibi_slopes=alibi_slopes(6), seed=6)


def test_logits_soft_cap(cuda_sim):
    run_case(cuda_sim, [1, 10], [50, 30], logits_soft_cap=2.5, seed=7)


def test_all_score_options_together(cuda_sim):
    run_case(cuda_sim, [1, 14, 1], [64, 40, 9], heads=(4, 1), alibi_slopes=alibi_slopes(4),
             sliding_window=9, logits_soft_cap=4.0, seed=8)


@pytest.mark.parametrize("partition_size", [32, 64, 100])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_kv(cuda_sim, partition_size, dtype):
    """Forced KV partitions merged by the combine kernel, decodes and prefill chunks alike."""
    plan = run_case(cuda_sim, [1, 9, 1, 3], [150, 75, 31, 3], dtype=dtype,
                    partition_size=partition_size, sliding_window=70, seed=9)
    assert plan["partition_size"] == -(-partition_size // 32) * 32
    assert plan["num_splits"] == -(-150 // plan["partition_size"])


def test_split_kv_with_padding_and_empty_requests(cuda_sim):
    run_case(cuda_sim, [0, 1, 5, 0], [9, 80, 40, 3], partition_size=32, pad_tokens=2, seed=10)


def test_automatic_split_for_few_long_decodes(cuda_sim):
    plan = run_case(cuda_sim, [1, 1], [700, 300], heads=(2, 1), num_sms=16, seed=11)
    # 2 blocks on 16 SMs: as many partitions as 256-token minimum allows over 700 tokens
    assert plan["num_splits"] == 2 and plan["partition_size"] == 352


def test_no_split_when_disabled_or_busy(cuda_sim):
    assert run_case(cuda_sim, [1, 1], [600, 20], heads=(2, 1), partition_size=-1,
                    num_sms=16, seed=12)["num_splits"] == 1
    assert run_case(cuda_sim, [1, 1], [600, 20], heads=(2, 1), num_sms=2,
                    seed=12)["num_splits"] == 1


def test_padding_rows_and_empty_requests(cuda_sim):
    run_case(cuda_sim, [0, 1, 0, 7, 1, 0], [5, 20, 7, 12, 4, 9], pad_tokens=3, seed=13)


def test_fused_qkv_views(cuda_sim):
    run_case(cuda_sim, [1, 9, 1], [30, 20, 9], fused_qkv=True, heads=(6, 2), seed=14)


def test_random_batches(cuda_sim):
    """Random mixed batches over every knob (seeded)."""
    rng = random.Random(1234)
    for case in range(12):
        num_seqs = rng.randint(1, 5)
        query_lens, seq_lens = [], []
        for _ in range(num_seqs):
            seq_len = rng.randint(1, 90)
            query_lens.append(rng.choice([0, 1, 1, rng.randint(1, seq_len)]))
            seq_lens.append(seq_len)
        num_kv_heads = rng.choice([1, 2])
        heads = (num_kv_heads * rng.choice([1, 2, 3, 5]), num_kv_heads)
        kwargs = {}
        if rng.random() < 0.3:
            kwargs["sliding_window"] = rng.randint(1, 40)
        if rng.random() < 0.3:
            kwargs["alibi_slopes"] = alibi_slopes(heads[0])
        if rng.random() < 0.2:
            kwargs["logits_soft_cap"] = 5.0
        run_case(cuda_sim, query_lens, seq_lens, dtype=rng.choice(DTYPES), heads=heads,
                 head_size=rng.choice([64, 80, 96]), block_size=rng.choice([3, 8, 16]),
                 pad_tokens=rng.randint(0, 2), partition_size=rng.choice([0, 0, 32, 64]),
                 seed=100 + case, **kwargs)


@pytest.mark.parametrize("offset", [0, 1, 2, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reshape_and_cache_alignments(cuda_sim, dtype, offset):
    """Every copy width (16/8/4/2 bytes), chosen from the alignment of strided inputs."""
    num_tokens, num_kv_heads, head_size, block_size, num_blocks = 5, 2, 64, 4, 6
    row = num_kv_heads * head_size
    gen = torch.Generator().manual_seed(offset)
    base = torch.randn(num_tokens * (row + offset) + offset, generator=gen).to(dtype)
    rows = base[offset:offset + num_tokens * (row + offset)].view(num_tokens, row + offset)
    key = rows[:, :row].view(num_tokens, num_kv_heads, head_size)
    value = torch.randn(num_tokens, num_kv_heads, head_size, generator=gen).to(dtype)
    slots = torch.tensor([3, -1, 17, 0, num_blocks * block_size + 2], dtype=torch.int64)
    shape = (num_blocks, block_size, num_kv_heads, head_size)
    key_cache, value_cache = torch.full(shape, math.nan, dtype=dtype), torch.zeros(shape, dtype=dtype)
    ref_k, ref_v = key_cache.clone(), value_cache.clone()
    cuda_sim.reshape_and_cache(key, value, key_cache, value_cache, slots)
    valid = slots[slots.ge(0) & slots.lt(num_blocks * block_size)]
    keep = slots.ge(0) & slots.lt(num_blocks * block_size)
    write_kv_cache(key[keep], value[keep], ref_k, ref_v, valid)
    torch.testing.assert_close(key_cache, ref_k, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(value_cache, ref_v, atol=0, rtol=0, equal_nan=True)


def test_simulator_reports_out_of_bounds_reads(cuda_sim):
    """The bounds check is live: a block table pointing past the cache is an error."""
    batch = make_paged_batch([1], [20], num_heads=2, num_kv_heads=1, head_size=64,
                             block_size=8, generator=torch.Generator().manual_seed(0))
    batch.metadata.block_tables[0, 1] = batch.key_cache.shape[0] + 5
    with pytest.raises(RuntimeError, match="out-of-bounds"):
        cuda_sim.paged_attention(batch.query, batch.key_cache, batch.value_cache,
                                 batch.metadata, 0.125)


# --- the tensor-core (WMMA) kernel: fp16/bf16 requests of 16+ new tokens -------------------

TC_DTYPES = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("head_size", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("dtype", TC_DTYPES, ids=str)
def test_tensor_core_prefill_mixed_batch(cuda_sim, dtype, head_size):
    """Chunks of 40 and 16 tokens on the tensor cores; 15 tokens and decodes on CUDA cores."""
    plan = run_case(cuda_sim, [1, 40, 16, 1, 15], [60, 70, 16, 5, 30], dtype=dtype,
                    head_size=head_size, heads=(8, 2), seed=20)
    assert plan["tc"] == 1
    assert (plan["tc_heads_per_block"], plan["tc_queries_per_block"]) == (4, 16)
    assert plan["queries_per_block"] == 2  # 8 rows of the CUDA-core kernel = 2 x 4 heads


@pytest.mark.parametrize("heads", [(4, 4), (12, 1), (72, 1), (6, 2)],
                         ids=lambda h: f"h{h[0]}kv{h[1]}")
def test_tensor_core_head_groups(cuda_sim, heads):
    plan = run_case(cuda_sim, [17, 1], [40, 9], heads=heads, seed=21)
    group = heads[0] // heads[1]
    assert plan["tc_heads_per_block"] == min(group, 64)
    assert plan["tc_queries_per_block"] == 64 // min(group, 64)
    assert plan["tc_head_chunks"] == -(-group // 64)


def test_tensor_core_long_prompt_spans_tiles(cuda_sim):
    """A 150-token prompt over 3 query tiles of 64 and 3 KV tiles, plus a chunk on context."""
    run_case(cuda_sim, [150, 32], [150, 170], heads=(2, 2), dtype=torch.bfloat16,
             block_size=16, seed=22)


@pytest.mark.parametrize("options", ["window", "alibi", "soft_cap", "all"])
def test_tensor_core_score_options(cuda_sim, options):
    kwargs = {}
    if options in ("window", "all"):
        kwargs["sliding_window"] = 21
    if options in ("alibi", "all"):
        kwargs["alibi_slopes"] = alibi_slopes(4)
    if options in ("soft_cap", "all"):
        kwargs["logits_soft_cap"] = 3.0
    run_case(cuda_sim, [1, 30, 18], [80, 60, 18], heads=(4, 2), seed=23, **kwargs)


def test_tensor_core_with_split_decodes(cuda_sim):
    """Decodes split over KV partitions next to tensor-core prefill rows: the combine kernel
    must leave the latter alone."""
    plan = run_case(cuda_sim, [1, 24, 1, 0], [130, 40, 70, 4], partition_size=32,
                    pad_tokens=2, seed=24)
    assert plan["tc"] == 1 and plan["num_splits"] == 5


def test_tensor_cores_off_and_fp32_use_cuda_cores(cuda_sim):
    assert run_case(cuda_sim, [20, 1], [30, 9], tensor_cores=False, seed=25)["tc"] == 0
    assert run_case(cuda_sim, [20, 1], [30, 9], dtype=torch.float32, seed=25)["tc"] == 0
