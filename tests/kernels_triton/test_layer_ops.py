"""Triton RMSNorm / fused add + RMSNorm / rotary against the torch layers, and their dispatch."""

from __future__ import annotations

import pytest
import torch

from octavo.layers import RMSNorm, rms_norm
from octavo.layers.layer_ops import LAYER_OPS_ENV, find_layer_op
from octavo.layers.rotary import apply_rotary, apply_rotary_torch
from octavo.plugins import layer_ops, reset_plugin_manager
from octavo_triton import norm_kernels, rotary_kernels
from octavo_triton.launch import interpreted
from octavo_triton.layer_ops import TritonLayerOps

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

if not ON_CUDA and not interpreted():
    pytest.skip("no CUDA device and the Triton interpreter is off", allow_module_level=True)


def randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=DEVICE)


def assert_matches_torch(out, expected, ulps=0):
    """The kernels round where the torch code does: 16-bit results are equal (within ``ulps``
    units in the last place where a float32 sum's order may flip a rounding); float32 ones may
    differ in the last bits (summation order, fused multiply-adds on a GPU)."""
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(out, expected, atol=0, rtol=ulps * torch.finfo(out.dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("hidden", [80, 576, 5000])  # 5000: more than one column block
def test_rms_norm_and_fused_add(dtype, hidden):
    x = randn(7, hidden, dtype=dtype, seed=1)
    residual = randn(7, hidden, dtype=dtype, seed=2)
    weight = randn(hidden, dtype=dtype, seed=3)
    assert_matches_torch(norm_kernels.rms_norm(x, weight, 1e-6), rms_norm(x, weight, 1e-6),
                         ulps=1)
    out, total = norm_kernels.fused_add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(total, x + residual)
    assert_matches_torch(out, rms_norm(x + residual, weight, 1e-5), ulps=1)


def test_rms_norm_strided_rows_and_bad_shapes():
    wide = randn(6, 2 * 96, seed=4)
    x = wide[:, :96]  # rows with stride 192
    weight = randn(96, seed=5)
    assert_matches_torch(norm_kernels.rms_norm(x, weight, 1e-6), rms_norm(x, weight, 1e-6))
    assert norm_kernels.rms_norm(x[:0], weight, 1e-6).shape == (0, 96)
    with pytest.raises(ValueError, match="RMSNorm weight has shape"):
        norm_kernels.rms_norm(x, weight[:95], 1e-6)
    with pytest.raises(ValueError, match="residual shape"):
        norm_kernels.fused_add_rms_norm(x, x[:5], weight, 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("rotary_dim", [80, 32, 24])  # full head 80, partial
def test_rotary(dtype, neox, rotary_dim):
    """Query and key heads rotated together from a fused QKV projection (strided view)."""
    qkv = randn(9, (4 + 2 + 2) * 80, dtype=dtype, seed=rotary_dim)
    qk = qkv[:, : 6 * 80].view(9, 6, 80)
    positions = torch.arange(9, device=DEVICE).float()[:, None] * 37
    freqs = positions / (10000 ** (torch.arange(0, rotary_dim, 2, device=DEVICE) / rotary_dim))
    cos, sin = freqs.cos(), freqs.sin()
    out = rotary_kernels.rotary(qk, cos, sin, neox)
    assert out.is_contiguous() and out.dtype == dtype
    assert_matches_torch(out, apply_rotary_torch(qk, cos, sin, neox))


def test_rotary_rejects_mismatched_cos_sin():
    x = randn(4, 2, 16)
    with pytest.raises(ValueError, match="cos/sin must be"):
        rotary_kernels.rotary(x, randn(3, 8), randn(3, 8))
    with pytest.raises(ValueError, match="rotary_dim 20"):
        rotary_kernels.rotary(x, randn(4, 10), randn(4, 10))


def test_registered_and_dispatched(monkeypatch, request):
    """The layers call the Triton ops where they are chosen (on the CPU: when named)."""
    reset_plugin_manager()  # a fresh choice cache, made after the spies are in place
    request.addfinalizer(reset_plugin_manager)  # and none left holding them
    calls = []
    for name in ("rms_norm", "fused_add_rms_norm", "rotary"):
        monkeypatch.setattr(TritonLayerOps, name, staticmethod(
            _counting(getattr(TritonLayerOps, name), name, calls)))
    assert layer_ops().get("triton") is TritonLayerOps
    assert set(TritonLayerOps.implemented_ops()) == {"rms_norm", "fused_add_rms_norm", "rotary"}
    x = randn(3, 64)
    if interpreted():
        monkeypatch.delenv(LAYER_OPS_ENV, raising=False)
        assert TritonLayerOps.priority < 0 and find_layer_op("rms_norm", x) is not TritonLayerOps.rms_norm
        monkeypatch.setenv(LAYER_OPS_ENV, "triton")
    assert find_layer_op("rms_norm", x.double()) is None

    norm = RMSNorm(64, 1e-6, device=DEVICE)
    norm.weight.copy_(randn(64, seed=9))
    out = norm(x)
    out_fused, total = norm(x, x)
    rotated = apply_rotary(x.view(3, 2, 32), randn(3, 8).cos(), randn(3, 8).sin())
    assert calls == ["rms_norm", "fused_add_rms_norm", "rotary"]
    assert_matches_torch(out, rms_norm(x, norm.weight, 1e-6), ulps=1)
    assert_matches_torch(out_fused, rms_norm(x + x, norm.weight, 1e-6), ulps=1)
    assert rotated.shape == (3, 2, 32)


def _counting(fn, name, calls):
    def counted(*args):
        calls.append(name)
        return fn(*args)
    return counted
