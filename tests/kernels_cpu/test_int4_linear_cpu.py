"""octavo_cpu's 4-bit product (``csrc/int4_linear.cpp``, the ``pack_int4_linear`` layer op)
against the float32 product of the dequantized weight, on fresh random weights and inputs.

The kernel dequantizes as ``scale * q - scale * zero`` (one fused multiply-add) and sums in
another order than ``F.linear``, so it agrees within float32 rounding, not bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from octavo_cpu.build import missing_toolchain

if missing_toolchain() is not None:
    pytest.skip(missing_toolchain(), allow_module_level=True)

from octavo_cpu import int4_linear  # noqa: E402
from octavo_cpu.layer_ops import CpuLayerOps  # noqa: E402


def random_weight(in_features: int, out_features: int, g_idx: torch.Tensor, seed: int):
    generator = torch.Generator().manual_seed(seed)
    groups = int(g_idx.max()) + 1
    codes = torch.randint(0, 16, (in_features, out_features), generator=generator)
    scales = (torch.rand(groups, out_features, generator=generator) * 0.02).half()
    zeros = torch.randint(0, 16, (groups, out_features), generator=generator)
    dense = (scales.float()[g_idx] * (codes - zeros[g_idx]).float()).t()  # [out, in]
    return codes, scales, zeros, dense


def runs(in_features: int, group_size: int) -> torch.Tensor:
    return torch.arange(in_features) // (group_size if group_size > 0 else in_features)


@pytest.mark.parametrize(("in_features", "out_features", "g_idx"), [
    (128, 64, runs(128, 32)),
    (576, 96, runs(576, 128)),  # a partial last group (576 = 4.5 x 128)
    (96, 40, runs(96, -1)),  # one group; 40 outputs: a partial panel
    (64, 24, torch.tensor([0] * 10 + [1] * 30 + [2] * 24)),  # runs of any length
], ids=["g32", "g128-partial", "per-row-partial-panel", "uneven-runs"])
@pytest.mark.parametrize("rows", [1, 3, 8, 13])  # one row; a register block; unpacked panels
@pytest.mark.parametrize("bias", [False, True])
def test_int4_linear_matches_the_dequantized_product(in_features, out_features, g_idx, rows,
                                                     bias):
    seed = in_features + out_features + rows
    codes, scales, zeros, dense = random_weight(in_features, out_features, g_idx, seed)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(seed + 1))
    b = torch.randn(out_features) if bias else None
    linear = CpuLayerOps.pack_int4_linear(codes, scales, zeros, g_idx)
    expected = F.linear(x, dense, b)
    torch.testing.assert_close(linear(x, b), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(linear(x.view(1, rows, -1), b), expected.view(1, rows, -1),
                               rtol=1e-5, atol=1e-5)


def test_a_strided_input_and_half_a_byte_per_weight():
    g_idx = runs(256, 64)
    codes, scales, zeros, dense = random_weight(256, 128, g_idx, seed=7)
    linear = int4_linear.pack(codes, scales, zeros, g_idx)
    wide = torch.randn(5, 512)
    x = wide[:, ::2]  # stride 2 along the features
    torch.testing.assert_close(linear(x), F.linear(x, dense), rtol=1e-5, atol=1e-5)
    weight_bytes = sum(b.numel() * b.element_size() for b in linear.buffers())
    # half a byte per weight, and a float32 scale and scale * zero per group and output
    assert weight_bytes == 256 * 128 // 2 + 4 * 128 * 8 + 4 * 8


def test_groups_out_of_order_are_refused():
    with pytest.raises(ValueError, match="non-decreasing"):
        int4_linear.pack(torch.zeros(64, 16, dtype=torch.int32), torch.ones(2, 16),
                         torch.zeros(2, 16), torch.tensor([1] * 32 + [0] * 32))


def test_the_provider_offers_it_for_float32_only():
    assert CpuLayerOps.supports("pack_int4_linear", "cpu", torch.float32)
    assert not CpuLayerOps.supports("pack_int4_linear", "cpu", torch.bfloat16)
