"""octavo_cpu's layer ops (RMSNorm, fused add + RMSNorm, rotary, SiLU-and-multiply, the KV
cache write) against core's torch code, the oracle.

Rotary and the cache write equal the torch code bit for bit in every dtype. The norms and
SiLU, float32: within a few float32 ulps of the torch code (the kernel sums the squares in
another order; its exp is its own). bfloat16 and float16: the kernels compute in float32 and
round once where torch rounds intermediate results to the dtype, so both are compared with
the exact (float64) result of the same inputs, and the kernel's error may be at most torch's
own error plus one ulp of the dtype.
"""

from __future__ import annotations

import pytest
import torch

from octavo.attention.torch_backend import write_kv_cache
from octavo.layers.activation import silu_and_mul
from octavo.layers.norm import rms_norm
from octavo.layers.rotary import apply_rotary_torch
from octavo_cpu.build import missing_toolchain

if missing_toolchain() is not None:
    pytest.skip(missing_toolchain(), allow_module_level=True)

from octavo_cpu.layer_ops import CpuLayerOps  # noqa: E402

F32 = dict(rtol=2e-6, atol=2e-6)
LOW_PRECISION = (torch.bfloat16, torch.float16)
ROWS = (1, 3, 16, 257)  # 257: more than one parallel task at hidden 576
HIDDEN = (1, 7, 576, 1031)  # odd sizes leave a vector tail


def random_tensor(*shape: int, seed: int, dtype=torch.float32, scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


def assert_close_to_oracle(got: torch.Tensor, oracle: torch.Tensor, exact: torch.Tensor) -> None:
    """float32: close to the oracle. Lower precision: no further from ``exact`` (float64) than
    the oracle is, plus one ulp of the dtype at the value's magnitude."""
    assert got.dtype == oracle.dtype and got.shape == oracle.shape
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, oracle, **F32)
        return
    ulp = torch.finfo(got.dtype).eps * exact.abs().clamp_min(torch.finfo(got.dtype).tiny)
    oracle_error = (oracle.double() - exact).abs()
    error = (got.double() - exact).abs()
    excess = error - oracle_error - ulp
    assert excess.max() <= 0, f"worst excess {excess.max():.3g} at {excess.argmax()}"


# --- RMSNorm -------------------------------------------------------------------------------

def rms_norm_exact(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.double()
    return weight.double() * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_rms_norm(rows, hidden, dtype):
    x = random_tensor(rows, hidden, seed=rows * hidden, dtype=dtype, scale=3.0)
    weight = random_tensor(hidden, seed=1, dtype=dtype)
    got = CpuLayerOps.rms_norm(x, weight, 1e-5)
    assert got.is_contiguous() and got.data_ptr() != x.data_ptr()
    assert_close_to_oracle(got, rms_norm(x, weight, 1e-5), rms_norm_exact(x, weight, 1e-5))


@pytest.mark.parametrize("layout", ["3d", "row_stride", "column_stride"])
def test_rms_norm_layouts(layout):
    base = random_tensor(4, 6, 2 * 96, seed=3)
    x = {"3d": base[..., :96].contiguous(), "row_stride": base[0, :, :96],
         "column_stride": base[0, :, ::2]}[layout]  # the last: not unit stride along hidden
    weight = random_tensor(96, seed=4)
    before = x.clone()
    torch.testing.assert_close(CpuLayerOps.rms_norm(x, weight, 1e-6),
                               rms_norm(x, weight, 1e-6), **F32)
    assert torch.equal(x, before)


def test_rms_norm_eps_matters():
    x = torch.full((2, 8), 1e-3)
    weight = torch.ones(8)
    torch.testing.assert_close(CpuLayerOps.rms_norm(x, weight, 1e-2), rms_norm(x, weight, 1e-2))
    assert not torch.allclose(CpuLayerOps.rms_norm(x, weight, 1e-2),
                              CpuLayerOps.rms_norm(x, weight, 1e-8))


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_fused_add_rms_norm(rows, hidden, dtype):
    x = random_tensor(rows, hidden, seed=rows + hidden, dtype=dtype, scale=2.0)
    residual = random_tensor(rows, hidden, seed=rows + hidden + 1, dtype=dtype, scale=5.0)
    weight = random_tensor(hidden, seed=2, dtype=dtype)
    x_before, residual_before = x.clone(), residual.clone()
    out, total = CpuLayerOps.fused_add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)  # not in place
    torch.testing.assert_close(total, x + residual, rtol=0, atol=0)  # one rounding, like torch
    assert_close_to_oracle(out, rms_norm(x + residual, weight, 1e-6),
                           rms_norm_exact(x + residual, weight, 1e-6))


def test_fused_add_rms_norm_strided_inputs():
    wide = random_tensor(5, 300, seed=5)
    x, residual = wide[:, :128], wide[:, 150:278]  # column slices: row stride 300
    weight = random_tensor(128, seed=6)
    out, total = CpuLayerOps.fused_add_rms_norm(x, residual, weight, 1e-6)
    torch.testing.assert_close(total, x + residual, rtol=0, atol=0)
    torch.testing.assert_close(out, rms_norm(x + residual, weight, 1e-6), **F32)


def test_rms_norm_rejects_mismatched_weight():
    with pytest.raises(RuntimeError, match="weight must be"):
        CpuLayerOps.rms_norm(torch.randn(2, 8), torch.ones(7), 1e-6)
    with pytest.raises(RuntimeError, match="weight dtype"):
        CpuLayerOps.rms_norm(torch.randn(2, 8), torch.ones(8, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(RuntimeError, match="float32, bfloat16 and float16"):
        CpuLayerOps.rms_norm(torch.randn(2, 8).double(), torch.ones(8).double(), 1e-6)


# --- Rotary --------------------------------------------------------------------------------

def cos_sin(tokens: int, half: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    angles = random_tensor(tokens, half, seed=seed, scale=50.0)
    return angles.cos().float(), angles.sin().float()


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("tokens,heads,head_size,rotary_dim", [
    (1, 12, 64, 64), (5, 3, 128, 128), (16, 12, 64, 32), (300, 4, 80, 80), (2, 1, 6, 2)])
def test_rotary(tokens, heads, head_size, rotary_dim, neox, dtype):
    x = random_tensor(tokens, heads, head_size, seed=tokens * heads, dtype=dtype)
    cos, sin = cos_sin(tokens, rotary_dim // 2, seed=head_size)
    got = CpuLayerOps.rotary(x, cos, sin, neox)
    assert got.is_contiguous()
    # rounded as the torch code rounds, without fused multiply-adds: equal bit for bit
    torch.testing.assert_close(got, apply_rotary_torch(x, cos, sin, neox), rtol=0, atol=0)
    assert torch.equal(got[..., rotary_dim:], x[..., rotary_dim:])  # the rest is copied


@pytest.mark.parametrize("neox", [True, False])
def test_rotary_on_fused_qkv_columns(neox):
    """As Attention.forward_qkv passes it: the q|k heads of a fused qkv row (row stride
    (H + 2 KH) * D), and a layout without unit stride along head_size."""
    tokens, heads, kv_heads, d = 7, 9, 3, 64
    qkv = random_tensor(tokens, (heads + 2 * kv_heads) * d, seed=7)
    qk = qkv[:, : (heads + kv_heads) * d].view(tokens, heads + kv_heads, d)
    cos, sin = cos_sin(tokens, d // 2, seed=8)
    before = qkv.clone()
    assert torch.equal(CpuLayerOps.rotary(qk, cos, sin, neox),
                       apply_rotary_torch(qk, cos, sin, neox))
    assert torch.equal(qkv, before)
    transposed = random_tensor(d, heads, tokens, seed=9).permute(2, 1, 0)
    assert torch.equal(CpuLayerOps.rotary(transposed, cos, sin, neox),
                       apply_rotary_torch(transposed, cos, sin, neox))


def test_rotary_rejects_bad_cos_sin():
    x = torch.randn(3, 2, 8)
    with pytest.raises(RuntimeError, match="float32"):
        CpuLayerOps.rotary(x, torch.ones(3, 4).double(), torch.ones(3, 4).double(), True)
    with pytest.raises(RuntimeError, match="exceeds head_size"):
        CpuLayerOps.rotary(x, torch.ones(3, 5), torch.ones(3, 5), True)


# --- SiLU and multiply ---------------------------------------------------------------------

def silu_and_mul_exact(x: torch.Tensor) -> torch.Tensor:
    return silu_and_mul(x.double())


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("d", [1, 9, 1536, 1031])
def test_silu_and_mul(rows, d, dtype):
    x = random_tensor(rows, 2 * d, seed=rows * d, dtype=dtype, scale=6.0)  # reaches |x| ~ 30
    got = CpuLayerOps.silu_and_mul(x)
    assert got.shape == (rows, d) and got.is_contiguous()
    assert_close_to_oracle(got, silu_and_mul(x), silu_and_mul_exact(x))


def test_silu_and_mul_extremes_and_layouts():
    gate = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, -87.0, -100.0, 100.0,
                         float("inf"), float("nan")])
    x = torch.cat([gate, torch.full_like(gate, 3.0)])
    got, want = CpuLayerOps.silu_and_mul(x), silu_and_mul(x)  # 1-D
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-30, equal_nan=True)
    batch = random_tensor(2, 3, 2 * 40, seed=10)  # [..., 2d] with two leading dims
    torch.testing.assert_close(CpuLayerOps.silu_and_mul(batch), silu_and_mul(batch), **F32)
    wide = random_tensor(4, 100, seed=11)[:, :80]  # a column slice: row stride 100
    torch.testing.assert_close(CpuLayerOps.silu_and_mul(wide), silu_and_mul(wide), **F32)


def test_silu_and_mul_rejects_odd_width():
    with pytest.raises(RuntimeError, match="2 \\* d"):
        CpuLayerOps.silu_and_mul(torch.randn(2, 7))


# --- KV cache write ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 16, 300])
def test_write_kv_cache(tokens, dtype):
    from octavo_cpu.layer_ops import _kernels

    heads, kv_heads, d, blocks, block_size = 9, 3, 64, 40, 16
    qkv = random_tensor(tokens, (heads + 2 * kv_heads) * d, seed=tokens, dtype=dtype)
    key = qkv[:, heads * d:(heads + kv_heads) * d].view(tokens, kv_heads, d)  # strided views
    value = qkv[:, (heads + kv_heads) * d:].view(tokens, kv_heads, d)
    generator = torch.Generator().manual_seed(tokens)
    slots = torch.randperm(blocks * block_size, generator=generator)[:tokens]
    slots[::5] = -1  # padding rows are skipped
    caches = [random_tensor(blocks, block_size, kv_heads, d, seed=s, dtype=dtype)
              for s in range(2)]
    expected = [c.clone() for c in caches]
    write_kv_cache(key, value, *expected, slots)
    _kernels().write_kv_cache(key, value, *caches, slots)
    assert torch.equal(caches[0], expected[0]) and torch.equal(caches[1], expected[1])


def test_write_kv_cache_rejects_slots_outside_the_cache():
    from octavo_cpu.layer_ops import _kernels

    cache = torch.zeros(2, 4, 1, 8)
    rows = torch.ones(1, 1, 8)
    with pytest.raises(RuntimeError, match="outside the cache"):
        _kernels().write_kv_cache(rows, rows, cache, cache.clone(), torch.tensor([8]))
    with pytest.raises(RuntimeError, match="cache must be contiguous"):
        _kernels().write_kv_cache(rows, rows, cache, cache.double(), torch.tensor([0]))


# --- Threads ---------------------------------------------------------------------------------

def test_results_do_not_depend_on_threads():
    x = random_tensor(512, 576, seed=12)  # several tasks per op
    weight = random_tensor(576, seed=13)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            results.append((CpuLayerOps.rms_norm(x, weight, 1e-6),
                            CpuLayerOps.silu_and_mul(x)))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_provider_offers_what_is_fast():
    for op in ("rms_norm", "fused_add_rms_norm", "rotary", "silu_and_mul"):
        assert CpuLayerOps.supports(op, "cpu", torch.float32)
        assert CpuLayerOps.supports(op, "cpu", torch.bfloat16)
        assert not CpuLayerOps.supports(op, "cpu", torch.float16)  # scalar conversions
    assert CpuLayerOps.supports("pack_linear", "cpu", torch.float32)
    assert not CpuLayerOps.supports("pack_linear", "cpu", torch.bfloat16)  # float32 kernel
