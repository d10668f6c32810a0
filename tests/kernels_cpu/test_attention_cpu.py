"""The CPU attention backend (C++ kernel + SDPA prefill) against the float64 reference of the
conformance suite, the selector's choice on CPU, and the kernel's input checks."""

from __future__ import annotations

import pytest
import torch

from octavo.attention import select_attention_backend
from octavo.testing.attention_suite import AttentionBackendSuite, make_paged_batch
from octavo_cpu.backend import (
    SDPA_MIN_QUERY_LEN,
    CpuAttentionBackend,
    kernel_only_plan,
    sdpa_split_plan,
)
from octavo_cpu.build import load_ops

if CpuAttentionBackend.unsupported_reason("cpu", torch.float32, 64) is not None:
    pytest.skip(CpuAttentionBackend.unsupported_reason("cpu", torch.float32, 64),
                allow_module_level=True)


class TestCpuAttentionSuite(AttentionBackendSuite):
    """Every shape of the suite; contexts long enough for many blocks and both paths."""

    backend_cls = CpuAttentionBackend
    long_context = 700


def test_selected_on_cpu():
    backend = select_attention_backend("cpu", torch.float32, 64)
    assert backend.name == "cpu"


@pytest.mark.parametrize("query_len", [1, SDPA_MIN_QUERY_LEN - 1, SDPA_MIN_QUERY_LEN, 200])
@pytest.mark.parametrize("cached", [0, 37])
def test_paths_agree_with_reference(query_len, cached):
    """Both sides of the SDPA threshold, with and without cached context before the chunk."""
    from octavo.attention.torch_backend import paged_attention_reference

    generator = torch.Generator().manual_seed(query_len * 100 + cached)
    batch = make_paged_batch([query_len, 1], [cached + query_len, 90], num_heads=6,
                             num_kv_heads=2, head_size=64, block_size=16, dtype=torch.float32,
                             device="cpu", generator=generator)
    backend = CpuAttentionBackend(6, 64, 2, 0.125)
    out = backend.forward(batch.query, batch.key, batch.value, batch.key_cache,
                          batch.value_cache, batch.metadata)
    expected = paged_attention_reference(batch.query.double(), batch.key_cache.double(),
                                         batch.value_cache.double(), batch.metadata, 0.125)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_plans_split_by_layer_kind_once_per_step():
    """A plain layer sends long chunks to SDPA, a windowed one sends everything to the kernel;
    each kind's plan is built once and shared by the layers of that kind."""
    batch = make_paged_batch([SDPA_MIN_QUERY_LEN, 1, 0, 3], [40, 30, 20, 3], num_heads=4,
                             num_kv_heads=2, head_size=64, block_size=16,
                             generator=torch.Generator().manual_seed(7))
    md = batch.metadata
    plain = CpuAttentionBackend(4, 64, 2, 0.125)
    windowed = CpuAttentionBackend(4, 64, 2, 0.125, sliding_window=8)
    for backend in (plain, windowed, plain):
        backend.forward(batch.query, batch.key, batch.value, batch.key_cache,
                        batch.value_cache, md)
    split, kernel_only = md.derived(sdpa_split_plan), md.derived(kernel_only_plan)
    assert split.kernel_seqs.tolist() == [1, 3] and split.sdpa_seqs == [0]
    assert split.kernel_seqs.dtype == torch.int32
    assert kernel_only.kernel_seqs.tolist() == [0, 1, 3] and kernel_only.sdpa_seqs == []
    assert md.derived(sdpa_split_plan) is split  # not rebuilt


def test_kernel_rejects_bad_inputs():
    ops = load_ops()
    q = torch.randn(2, 4, 64)
    cache = torch.randn(4, 16, 2, 64)
    ints = dict(block_tables=torch.zeros(2, 1, dtype=torch.int32),
                seq_lens=torch.ones(2, dtype=torch.int32),
                query_start_loc=torch.tensor([0, 1, 2], dtype=torch.int32),
                seq_indices=torch.tensor([0, 1], dtype=torch.int32))

    def call(**overrides):
        args = dict(out=torch.empty_like(q), query=q, key_cache=cache, value_cache=cache,
                    **ints)
        args.update(overrides)
        ops.paged_attention(args["out"], args["query"], args["key_cache"], args["value_cache"],
                            args["block_tables"], args["seq_lens"], args["query_start_loc"],
                            args["seq_indices"], 0.125, None, 0, 0.0)

    call()
    with pytest.raises(RuntimeError, match="int32"):
        call(seq_lens=torch.ones(2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="share a dtype"):
        call(key_cache=cache.double(), value_cache=cache.double())
    with pytest.raises(RuntimeError, match="multiple of num_kv_heads"):
        call(query=torch.randn(2, 3, 64), out=torch.empty(2, 3, 64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("head_size", "block_size"), [(64, 16), (36, 12), (100, 5), (8, 33)])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_odd_shapes(dtype, head_size, block_size, threads):
    """The kernel's column tiles and groups of keys with their tails: head sizes that are not a
    multiple of the vector width, blocks of 5, 12 or 33 rows (groups of 8, 4 and single keys),
    partial blocks, SmolLM2's 3 query heads per KV head, sliding windows and ALiBi; one item
    per sequence (many sequences) or per (sequence, KV head) (few)."""
    from octavo.attention.torch_backend import paged_attention_reference

    generator = torch.Generator().manual_seed(head_size * 1000 + block_size)
    query_lens, seq_lens = [1, 1, 3, 1, 1, 2], [1, 150, 40, block_size, block_size + 1, 77]
    batch = make_paged_batch(query_lens, seq_lens, num_heads=9, num_kv_heads=3,
                             head_size=head_size, block_size=block_size, dtype=dtype,
                             device="cpu", generator=generator)
    md = batch.metadata
    ops = load_ops()
    flat = batch.key_cache.view(-1, 3, head_size)  # write the new tokens' K/V
    flat_v = batch.value_cache.view(-1, 3, head_size)
    valid = md.slot_mapping >= 0
    flat[md.slot_mapping[valid]] = batch.key[: int(valid.sum())].reshape(-1, 3, head_size)
    flat_v[md.slot_mapping[valid]] = batch.value[: int(valid.sum())].reshape(-1, 3, head_size)
    query = batch.query.contiguous()
    scale = head_size ** -0.5
    slopes = torch.linspace(-0.5, -0.01, 9)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seqs in ([0, 1, 2, 3, 4, 5], [1, 2]):
            for window, alibi in ((0, None), (21, None), (0, slopes)):
                out = torch.zeros_like(query)
                ops.paged_attention(out, query, batch.key_cache, batch.value_cache,
                                    md.block_tables, md.seq_lens, md.query_start_loc,
                                    torch.tensor(seqs, dtype=torch.int32), scale, alibi,
                                    window, 0.0)
                expected = paged_attention_reference(
                    query.double(), batch.key_cache.double(), batch.value_cache.double(), md,
                    scale, alibi_slopes=None if alibi is None else alibi.double(),
                    sliding_window=window or None)
                starts = md.query_start_loc.tolist()
                rows = [r for i in seqs for r in range(starts[i], starts[i + 1])]
                tol = 1e-5 if dtype == torch.float32 else 2e-2
                torch.testing.assert_close(out[rows].double(), expected[rows], rtol=tol,
                                           atol=tol)
    finally:
        torch.set_num_threads(previous)
