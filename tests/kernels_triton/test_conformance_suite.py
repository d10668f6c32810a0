"""The conformance suite itself: its float64 reference, and that it fails broken backends.

A backend that forgets output rows, writes padded slots or reads stale cache blocks must fail
``AttentionBackendSuite.check``; each is built here by breaking the torch backend one way.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from octavo.attention.torch_backend import TorchAttentionBackend
from octavo.testing.attention_suite import (
    AttentionBackendSuite,
    make_paged_batch,
    poisoned_allocations,
    reference_attention,
    reference_cache,
)


def test_reference_matches_sdpa_on_a_whole_prompt():
    """One prompt with no cached context is plain causal attention (GQA expanded by hand)."""
    batch = make_paged_batch([11], [11], num_heads=4, num_kv_heads=2, head_size=16,
                             block_size=4, generator=torch.Generator().manual_seed(1))
    out = reference_attention(batch, 0.25)
    q = batch.query.transpose(0, 1)  # [H, T, D]
    k = batch.key.repeat_interleave(2, dim=1).transpose(0, 1)
    v = batch.value.repeat_interleave(2, dim=1).transpose(0, 1)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25)
    torch.testing.assert_close(out.float(), expected.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_reference_cache_skips_padding():
    batch = make_paged_batch([2, 1], [5, 3], num_heads=2, num_kv_heads=1, head_size=8,
                             block_size=4, pad_tokens=2)
    key_cache, value_cache = reference_cache(batch)
    slots = batch.metadata.slot_mapping[:3]
    torch.testing.assert_close(key_cache.view(-1, 1, 8)[slots], batch.key[:3])
    torch.testing.assert_close(value_cache.view(-1, 1, 8)[slots], batch.value[:3])
    untouched = torch.ones(key_cache.numel() // 8, dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(key_cache.view(-1, 8)[untouched].isnan(),
                       batch.key_cache.view(-1, 8)[untouched].isnan())


def test_poisoned_allocations_fill_and_restore():
    originals = (torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty)
    with poisoned_allocations("cpu"):
        assert torch.empty(3).isnan().all()
        assert torch.empty_like(torch.ones(2)).isnan().all()
        assert torch.ones(1).new_empty(4).isnan().all()
        assert torch.empty(2, dtype=torch.int64).shape == (2,)  # integers are left alone
    assert (torch.empty, torch.empty_like, torch.empty_strided,
            torch.Tensor.new_empty) == originals


class SkipsLastRow(TorchAttentionBackend):
    """Leaves the last output row as allocated."""

    name = "broken-last-row"

    def forward(self, query, key, value, key_cache, value_cache, metadata):
        out = super().forward(query, key, value, key_cache, value_cache, metadata)
        result = torch.empty_like(out)
        result[: metadata.num_tokens - 1] = out[: metadata.num_tokens - 1]
        return result


class WritesPadding(TorchAttentionBackend):
    """Writes padded rows (slot -1) into the last slot of the cache."""

    name = "broken-padding"

    def forward(self, query, key, value, key_cache, value_cache, metadata):
        out = super().forward(query, key, value, key_cache, value_cache, metadata)
        pad = metadata.slot_mapping < 0
        key_cache.view(-1, *key_cache.shape[2:])[metadata.slot_mapping[pad]] = key[pad]
        return out


class ReadsStaleBlock(TorchAttentionBackend):
    """Attends over one position past each request's end (stale, NaN-poisoned cache)."""

    name = "broken-stale"

    def forward(self, query, key, value, key_cache, value_cache, metadata):
        metadata.seq_lens_cpu = [s + 1 for s in metadata.seq_lens_cpu]
        metadata.seq_lens = metadata.seq_lens + 1
        return super().forward(query, key, value, key_cache, value_cache, metadata)


class TestSuiteFailsBrokenBackends(AttentionBackendSuite):
    backend_cls = TorchAttentionBackend
    dtypes = (torch.float32,)

    @pytest.mark.parametrize("broken", [SkipsLastRow, WritesPadding, ReadsStaleBlock])
    def test_broken_backend_fails(self, request, broken, monkeypatch):
        monkeypatch.setattr(self, "backend_cls", broken)
        with pytest.raises(AssertionError):
            self.check(request, [1, 5, 1], [9, 5, 20], dtype=torch.float32, pad_tokens=2)

    def test_unbroken_backend_passes(self, request):
        self.check(request, [1, 5, 1], [9, 5, 20], dtype=torch.float32, pad_tokens=2)

    # Only the tests above: the torch backend's own suite runs in tests/core.
    test_mixed_batch = test_head_configs = test_decode_batch = test_prefill_batch = None
    test_prefill_chunks = test_sliding_window = test_alibi = test_logits_soft_cap = None
    test_fused_qkv_views = test_padding_and_empty_requests = None
