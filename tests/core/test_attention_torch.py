"""The torch attention backend: the conformance suite, and the reference itself checked
against dense attention (``scaled_dot_product_attention`` on unpaged K/V) built here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from octavo.attention.base import AttentionMetadata
from octavo.attention.torch_backend import (
    MAX_DECODE_PADDING,
    TorchAttentionBackend,
    decode_plan_builder,
    group_by_length,
)
from octavo.testing.attention_suite import AttentionBackendSuite, alibi_slopes, make_paged_batch


class TestTorchAttentionSuite(AttentionBackendSuite):
    backend_cls = TorchAttentionBackend
    dtypes = (torch.float32, torch.bfloat16)


def dense_attention(q, k, v, scale, *, sliding_window=None, alibi=None, soft_cap=None):
    """Causal attention of the last ``q_len`` positions over ``s`` contiguous positions.

    q: [q_len, H, D]; k, v: [s, KH, D] -> [q_len, H, D], computed in float64.
    """
    q_len, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    q_pos = torch.arange(seq_len - q_len, seq_len)[:, None]
    k_pos = torch.arange(seq_len)[None, :]
    allowed = k_pos <= q_pos
    if sliding_window is not None:
        allowed &= k_pos > q_pos - sliding_window
    qh = q.double().transpose(0, 1)  # [H, q_len, D]
    kh = k.double().transpose(0, 1).repeat_interleave(group, dim=0)  # [H, s, D]
    vh = v.double().transpose(0, 1).repeat_interleave(group, dim=0)
    if soft_cap is None:
        bias = torch.zeros(num_heads, q_len, seq_len, dtype=torch.float64)
        if alibi is not None:
            bias += alibi.double()[:, None, None] * (k_pos - q_pos)
        bias.masked_fill_(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, scale=scale)
    else:  # SDPA has no soft cap: the formula by hand
        scores = soft_cap * torch.tanh(qh @ kh.transpose(1, 2) * scale / soft_cap)
        if alibi is not None:
            scores = scores + alibi.double()[:, None, None] * (k_pos - q_pos)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ vh
    return out.transpose(0, 1)  # [q_len, H, D]


def run_paged(query_lens, seq_lens, *, num_heads=4, num_kv_heads=2, head_size=32,
              block_size=8, seed=0, **backend_kwargs):
    """Page dense per-request K/V into a shuffled cache by hand; return (out, expected)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks) + 2
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables = []
    for n in blocks:
        tables.append(order[:n])
        order = order[n:]
    shape = (num_blocks, block_size, num_kv_heads, head_size)
    key_cache, value_cache = torch.zeros(shape), torch.zeros(shape)

    dense_k = [torch.randn(s, num_kv_heads, head_size, generator=gen) for s in seq_lens]
    dense_v = [torch.randn(s, num_kv_heads, head_size, generator=gen) for s in seq_lens]
    queries = [torch.randn(q, num_heads, head_size, generator=gen) for q in query_lens]
    new_k, new_v, slots = [], [], []
    for i, (q_len, s_len) in enumerate(zip(query_lens, seq_lens)):
        for pos in range(s_len):
            block, offset = tables[i][pos // block_size], pos % block_size
            if pos < s_len - q_len:  # context from earlier steps
                key_cache[block, offset] = dense_k[i][pos]
                value_cache[block, offset] = dense_v[i][pos]
            else:
                new_k.append(dense_k[i][pos])
                new_v.append(dense_v[i][pos])
                slots.append(block * block_size + offset)

    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    width = max(blocks)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_tables=block_tables,
        max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        query_start_loc_cpu=starts, seq_lens_cpu=list(seq_lens))
    scale = head_size ** -0.5
    backend = TorchAttentionBackend(num_heads, head_size, num_kv_heads, scale, **backend_kwargs)
    out = backend.forward(torch.cat(queries), torch.stack(new_k), torch.stack(new_v),
                          key_cache, value_cache, metadata)

    for i, s_len in enumerate(seq_lens):  # the new K/V landed where the table says
        for pos in range(s_len):
            block, offset = tables[i][pos // block_size], pos % block_size
            assert torch.equal(key_cache[block, offset], dense_k[i][pos])
            assert torch.equal(value_cache[block, offset], dense_v[i][pos])
    expected = torch.cat([
        dense_attention(queries[i], dense_k[i], dense_v[i], scale,
                        sliding_window=backend_kwargs.get("sliding_window"),
                        alibi=backend_kwargs.get("alibi_slopes"),
                        soft_cap=backend_kwargs.get("logits_soft_cap"))
        for i in range(len(seq_lens))]).float()
    return out, expected


MIXED = ([1, 13, 1, 20, 1], [17, 13, 8, 29, 1])


@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_reference_matches_dense_attention(block_size, heads):
    out, expected = run_paged(*MIXED, num_heads=heads[0], num_kv_heads=heads[1],
                              block_size=block_size, seed=block_size)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 3, 10])
def test_reference_sliding_window_matches_dense(window):
    out, expected = run_paged(*MIXED, sliding_window=window, seed=window)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_reference_alibi_matches_dense():
    out, expected = run_paged(*MIXED, alibi_slopes=alibi_slopes(4), seed=1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_reference_soft_cap_matches_dense():
    out, expected = run_paged(*MIXED, logits_soft_cap=2.0, seed=2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# Ten decodes whose contexts fall in several length groups, beside one prefill chunk.
MANY_DECODES = ([1] * 9 + [6, 1], [3, 40, 41, 5, 44, 120, 7, 100, 2, 30, 39])


def test_decode_groups_bound_the_padding():
    lens = [3, 40, 41, 5, 44, 120, 7, 100, 2, 39]
    groups = group_by_length(lens)
    assert sorted(i for g in groups for i in g) == list(range(len(lens)))
    for group in groups:
        longest = max(lens[i] for i in group)
        assert sum(lens[i] for i in group) >= (1 - MAX_DECODE_PADDING) * longest * len(group)
    assert [sorted(lens[i] for i in g) for g in groups] == [
        [2, 3], [5, 7], [39, 40, 41, 44], [100, 120]]
    assert group_by_length([]) == [] and group_by_length([5]) == [[0]]


@pytest.mark.parametrize("kwargs", [{}, {"sliding_window": 9}, {"alibi_slopes": alibi_slopes(4)},
                                    {"logits_soft_cap": 2.0}],
                         ids=["plain", "window", "alibi", "soft_cap"])
def test_grouped_decodes_match_dense(kwargs):
    out, expected = run_paged(*MANY_DECODES, seed=3, **kwargs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_dense_attention_helper_is_causal():
    """Guards the test's own oracle: a full prompt equals SDPA's is_causal path."""
    q, k, v = torch.randn(3, 6, 2, 16).unbind(0)
    expected = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True).transpose(0, 1)
    torch.testing.assert_close(dense_attention(q, k, v, 16 ** -0.5).float(), expected,
                               atol=1e-6, rtol=1e-6)


def test_suite_batch_builder_layout():
    """make_paged_batch: shuffled tables, context cached, stale data elsewhere, slots right."""
    batch = make_paged_batch([2, 1], [5, 9], num_heads=2, num_kv_heads=1, head_size=8,
                             block_size=4, generator=torch.Generator().manual_seed(3))
    md = batch.metadata
    assert md.query_start_loc_cpu == [0, 2, 3] and md.seq_lens_cpu == [5, 9]
    used = md.block_tables[0, :2].tolist() + md.block_tables[1, :3].tolist()
    assert 0 not in used and len(set(used)) == 5
    expected_slots = [md.block_tables[0, p // 4].item() * 4 + p % 4 for p in (3, 4)]
    expected_slots.append(md.block_tables[1, 2].item() * 4 + 0)
    assert md.slot_mapping.tolist() == expected_slots
    flat = batch.key_cache.view(-1, 1, 8)
    cached = [md.block_tables[0, p // 4].item() * 4 + p % 4 for p in range(3)]
    assert not flat[cached].isnan().any()
    assert flat[expected_slots].isnan().all() and batch.key_cache[0].isnan().all()




def test_derived_data_is_built_once_per_metadata_and_builder():
    calls = []

    def num_decodes(md: AttentionMetadata) -> int:
        calls.append(("decodes", md))
        starts = md.query_start_loc_cpu
        return sum(hi - lo == 1 for lo, hi in zip(starts, starts[1:]))

    def longest(md: AttentionMetadata) -> int:
        calls.append(("longest", md))
        return max(md.seq_lens_cpu)

    gen = torch.Generator().manual_seed(0)
    first = make_paged_batch([1, 3, 1], [5, 9, 2], num_heads=2, num_kv_heads=1, head_size=8,
                             block_size=4, generator=gen).metadata
    second = make_paged_batch([1], [3], num_heads=2, num_kv_heads=1, head_size=8,
                              block_size=4, generator=gen).metadata
    for _ in range(3):  # one per layer
        assert first.derived(num_decodes) == 2 and first.derived(longest) == 9
    assert calls == [("decodes", first), ("longest", first)]
    assert second.derived(num_decodes) == 1  # a new step builds again
    assert calls[-1] == ("decodes", second)


def test_torch_decode_plan_is_shared_by_the_layers_of_a_step():
    batch = make_paged_batch(*MANY_DECODES, num_heads=4, num_kv_heads=2, head_size=16,
                             block_size=8, generator=torch.Generator().manual_seed(4))
    md = batch.metadata
    backend = TorchAttentionBackend(4, 16, 2, 0.25)
    assert decode_plan_builder(8) is decode_plan_builder(8)  # a stable cache key
    first = backend.forward(batch.query, batch.key, batch.value, batch.key_cache,
                            batch.value_cache, md)
    plan = md.derived(decode_plan_builder(8))
    assert plan.decodes == {i for i, n in enumerate(MANY_DECODES[0]) if n == 1}
    assert sum(len(g.rows) for g in plan.groups) == len(plan.decodes)
    again = backend.forward(batch.query, batch.key, batch.value, batch.key_cache,
                            batch.value_cache, md)
    assert md.derived(decode_plan_builder(8)) is plan
    torch.testing.assert_close(again, first)
