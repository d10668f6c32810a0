"""The Triton attention backend against the torch reference (interpreter on CPU, or CUDA)."""

from __future__ import annotations

import pytest
import torch

from octavo.attention import select_attention_backend
from octavo.plugins import attention_backends
from octavo.testing.attention_suite import AttentionBackendSuite, make_paged_batch
from octavo_triton.attention_kernels import paged_attention, plan_launches
from octavo_triton.backend import TritonAttentionBackend
from octavo_triton.launch import interpreted

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"

if not ON_CUDA and not interpreted():
    pytest.skip("Triton kernels were imported before TRITON_INTERPRET=1 was set and there is "
                "no CUDA device", allow_module_level=True)


class TestTritonAttentionSuite(AttentionBackendSuite):
    """The conformance suite; small shapes on CPU, where each program costs milliseconds."""

    backend_cls = TritonAttentionBackend
    device = DEVICE
    if ON_CUDA:  # every distinct launch compiles (about a second each): keep them few
        block_sizes = (16, 32)
        max_context = 300
        long_context = 2000
        num_decodes = 12
    else:
        block_sizes = (16, 32)
        head_configs = ((4, 4), (4, 1))
        max_context = 80
        long_context = 160
        num_decodes = 2


class TestTritonSplitKV(AttentionBackendSuite):
    """Forces the flash-decoding path (KV split over programs, then a merge kernel)."""

    backend_cls = TritonAttentionBackend
    device = DEVICE
    dtypes = (torch.float32, torch.bfloat16) if ON_CUDA else (torch.float32,)
    block_sizes = (16,)
    head_sizes = (64,)
    head_configs = ((4, 4), (4, 1))
    max_context = 80
    long_context = 200
    sliding_windows = (20,)

    def make_backend(self, num_heads, head_size, num_kv_heads, **kwargs):
        backend = super().make_backend(num_heads, head_size, num_kv_heads, **kwargs)
        backend.launch_config = {"num_splits": 3, "block_n": 32}
        return backend

    if not ON_CUDA:  # the interpreter is slow: decodes and one mixed batch reach the split path
        test_head_configs = test_prefill_batch = test_prefill_chunks = test_sliding_window = None
        test_alibi = test_logits_soft_cap = test_fused_qkv_views = None
        test_padding_and_empty_requests = None


class TestTritonMixedLaunches(AttentionBackendSuite):
    """Forces the two-launch plan (decode tiles + prefill tiles) for batches that mix both."""

    backend_cls = TritonAttentionBackend
    device = DEVICE
    dtypes = (torch.float32,)
    block_sizes = (16,)
    head_sizes = (64,)
    head_configs = ((4, 1),)

    def make_backend(self, num_heads, head_size, num_kv_heads, **kwargs):
        backend = super().make_backend(num_heads, head_size, num_kv_heads, **kwargs)
        backend.launch_config = {"mixed_launches": True}
        return backend

    # Only batches that mix short and long queries take two launches.
    test_decode_batch = test_prefill_batch = test_alibi = test_logits_soft_cap = None
    test_sliding_window = test_fused_qkv_views = None


def test_plan_launches_splits_mixed_batches():
    query = torch.empty(10, 8, 64)
    plans = plan_launches(query, 2, 10, 3, max_query_len=8, max_seq_len=50, min_query_len=1,
                          overrides={"mixed_launches": True})
    assert [(p["min_query_len"], p["max_query_len"]) for p in plans] == [(0, 4), (5, 2**31 - 1)]
    single = plan_launches(query, 2, 10, 3, max_query_len=8, max_seq_len=50, min_query_len=5,
                           overrides={"mixed_launches": True})
    assert len(single) == 1


def test_plugin_registers_backend():
    assert attention_backends().get("triton") is TritonAttentionBackend


def test_supports_and_priority():
    if ON_CUDA and not interpreted():
        assert TritonAttentionBackend.supports("cuda", torch.bfloat16, 128)
        assert not TritonAttentionBackend.supports("cpu", torch.float32, 128)
        assert select_attention_backend("cuda", torch.float16, 128) is TritonAttentionBackend
    else:
        assert TritonAttentionBackend.supports("cpu", torch.float32, 64)
        assert TritonAttentionBackend.priority < 0  # the CPU default stays torch or cpu
        assert select_attention_backend("cpu", torch.float32, 64).name in ("torch", "cpu")
        assert select_attention_backend("cpu", torch.float32, 64, name="triton") \
            is TritonAttentionBackend
    assert not TritonAttentionBackend.supports(DEVICE, torch.float32, 512)
    assert not TritonAttentionBackend.supports(DEVICE, torch.int8, 64)
    assert TritonAttentionBackend.unsupported_reason(DEVICE, torch.float32, 512) == \
        "head size 512 is outside 1..256"
    assert TritonAttentionBackend.supports(DEVICE, torch.float32, 256)
    with pytest.raises(ValueError, match="'triton': head size 512 is outside 1..256"):
        TritonAttentionBackend(4, 512, 2, 0.1)
    assert "dtype torch.int8" in TritonAttentionBackend.unsupported_reason(DEVICE, torch.int8, 64)


def test_non_power_of_two_head_size_and_group():
    """Head size 80 (padded tile) and 3 query heads per KV head (padded rows)."""
    batch = make_paged_batch([1, 9], [21, 9], num_heads=6, num_kv_heads=2, head_size=80,
                             block_size=16, device=DEVICE,
                             generator=torch.Generator().manual_seed(5))
    md = batch.metadata
    # paged_attention only reads the cache: write the new K/V the reference way first.
    from octavo.attention.torch_backend import paged_attention_reference, write_kv_cache

    write_kv_cache(batch.key, batch.value, batch.key_cache, batch.value_cache, md.slot_mapping)
    out = torch.full_like(batch.query, float("nan"))
    paged_attention(out, batch.query, batch.key_cache, batch.value_cache, md.block_tables,
                    md.seq_lens, md.query_start_loc, md.num_tokens, md.max_query_len,
                    md.max_seq_len, 80 ** -0.5)
    expected = paged_attention_reference(batch.query, batch.key_cache, batch.value_cache, md,
                                         80 ** -0.5)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_fallback_to_torch_is_logged_with_its_reason(monkeypatch, caplog):
    """Where Triton cannot run (here: CPU without the interpreter), a CPU backend serves and
    the log says why the higher-priority triton backend was passed over."""
    import octavo_triton.launch as launch

    monkeypatch.setattr(TritonAttentionBackend, "priority", 10)
    monkeypatch.setattr(launch, "interpreter_requested", lambda: False)
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: False)
    reason = TritonAttentionBackend.unsupported_reason("cpu", torch.float32, 64)
    assert "no CUDA device and Triton's interpreter is off" in reason
    assert "CUDA is not available" in TritonAttentionBackend.unsupported_reason(
        "cuda", torch.float16, 64)
    with caplog.at_level("INFO", logger="octavo.attention.selector"):
        assert select_attention_backend("cpu", torch.float32, 64).name in ("torch", "cpu")
    assert "'triton' (priority 10) not used" in caplog.text and reason in caplog.text
    with pytest.raises(ValueError, match="interpreter is off"):
        select_attention_backend("cpu", torch.float32, 64, name="triton")
    with pytest.raises(ValueError, match="'torch': dtype torch.int8 is not supported"):
        select_attention_backend("cpu", torch.int8, 64)  # no backend: every reason is given
