"""octavo_cpu's 8-bit product (``csrc/int8_linear.cpp``, the ``pack_int8_linear`` layer op)
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
from octavo_cpu.build import load_ops  # noqa: E402
from octavo_cpu.layer_ops import CpuLayerOps  # noqa: E402


def random_weight(in_features: int, out_features: int, g_idx: torch.Tensor, seed: int,
                  sym: bool = False):
    generator = torch.Generator().manual_seed(seed)
    groups = int(g_idx.max()) + 1
    codes = torch.randint(0, 256, (in_features, out_features), generator=generator)
    scales = (torch.rand(groups, out_features, generator=generator) * 2e-3 + 1e-4).half()
    if sym:
        zeros = torch.full((groups, out_features), 128)
    else:
        zeros = torch.randint(0, 256, (groups, out_features), generator=generator)
    dense = (scales.float()[g_idx] * (codes - zeros[g_idx]).float()).t()  # [out, in]
    return codes, scales, zeros, dense


def runs(in_features: int, group_size: int) -> torch.Tensor:
    return torch.arange(in_features) // (group_size if group_size > 0 else in_features)


def close(got: torch.Tensor, expected: torch.Tensor) -> None:
    # float32 rounding of sums of K products of size ~0.1-0.3: well under 1e-5 of the scale
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(("in_features", "out_features", "g_idx", "sym"), [
    (128, 64, runs(128, 32), False),
    (576, 96, runs(576, 128), False),  # a partial last group (576 = 4.5 x 128)
    (256, 48, runs(256, 128), True),  # symmetric: every zero 128
    (99, 40, runs(99, -1), False),  # one group, odd; 40 outputs: a partial panel
    (300, 20, runs(300, -1), True),  # one group, split into runs of 128, 128 and 44
    (64, 24, torch.tensor([0] * 9 + [1] * 31 + [2] * 24), False),  # runs of any length, odd
    (200, 7, runs(200, 32), True),  # fewer outputs than a panel; a partial last group of 8
], ids=["g32", "g128-partial", "g128-sym", "per-row-partial-panel", "per-row-split",
        "uneven-runs", "7-outputs"])
# one row; blocks of run sums (AVX2: 6; 8 = 4 + 4; 13 = 5 + 4 + 4); panels dequantized once
# (17 = 6 + 6 + 5; 64)
@pytest.mark.parametrize("rows", [1, 3, 6, 8, 13, 17, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_the_dequantized_product(in_features, out_features, g_idx, sym,
                                                     rows, bias):
    seed = in_features + out_features + rows
    codes, scales, zeros, dense = random_weight(in_features, out_features, g_idx, seed, sym)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(seed + 1))
    b = torch.randn(out_features) if bias else None
    linear = CpuLayerOps.pack_int8_linear(codes, scales, zeros, g_idx)
    expected = F.linear(x, dense, b)
    close(linear(x, b), expected)
    close(linear(x.view(1, rows, -1), b), expected.view(1, rows, -1))


@pytest.mark.parametrize("rows", [1, 4, 16])
def test_desc_act_permuted_into_group_order(rows):
    """A desc_act weight: groups scattered over the input features. Permuted into group order
    once, the input columns gathered the same way per call (as octavo_quant does)."""
    in_features, out_features = 160, 50
    g_idx = torch.randperm(in_features, generator=torch.Generator().manual_seed(3)) // 32
    codes, scales, zeros, dense = random_weight(in_features, out_features, g_idx, seed=rows)
    perm = torch.argsort(g_idx, stable=True)
    linear = int4_linear.pack_int8(codes[perm], scales, zeros, g_idx[perm])
    x = torch.randn(rows, in_features)
    close(linear(x.index_select(1, perm)), F.linear(x, dense))


def test_every_code_and_zero_point_in_one_panel():
    """Codes 0 and 255 (the byte's extremes, zero-extended, not sign-extended) against zeros
    0 and 255, each output feature a single input feature: the weights themselves."""
    codes = torch.tensor([[0, 255, 0, 255, 128, 1, 254, 127] * 2])  # [1, 16]
    zeros = torch.tensor([[0, 0, 255, 255, 128, 0, 255, 128] * 2])
    scales = torch.full((1, 16), 0.5)
    linear = int4_linear.pack_int8(codes, scales, zeros, torch.zeros(1, dtype=torch.int64))
    expected = (0.5 * (codes - zeros)).float()
    for rows in (1, 5, 9):
        torch.testing.assert_close(linear(torch.ones(rows, 1)), expected.expand(rows, 16),
                                   rtol=0, atol=0)


def test_long_groups_are_split_into_runs_of_128():
    """Few rows sum codes * x over a run before scaling: a group of -1 is cut into runs of 128
    (the same scale and zero each) so those sums stay as short as a group of 128's."""
    in_features = 1000
    g_idx = runs(in_features, -1)
    codes, scales, zeros, dense = random_weight(in_features, 32, g_idx, seed=11)
    linear = int4_linear.pack_int8(codes, scales, zeros, g_idx)
    assert linear.group_ends.tolist() == [128 * i for i in range(1, 8)] + [1000]
    assert linear.scale_zero.shape == (2, 8, 32)
    x = torch.randn(3, in_features)
    close(linear(x), F.linear(x, dense))


def test_a_strided_input_and_a_byte_per_weight():
    g_idx = runs(256, 64)
    codes, scales, zeros, dense = random_weight(256, 128, g_idx, seed=7)
    linear = int4_linear.pack_int8(codes, scales, zeros, g_idx)
    wide = torch.randn(5, 512)
    x = wide[:, ::2]  # stride 2 along the features
    close(linear(x), F.linear(x, dense))
    weight_bytes = sum(b.numel() * b.element_size() for b in linear.buffers())
    # a byte per weight, and a float32 scale and scale * zero per group and output
    assert weight_bytes == 256 * 128 + 4 * 128 * 8 + 4 * 8


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="non-decreasing"):
        int4_linear.pack_int8(torch.zeros(64, 16, dtype=torch.int32), torch.ones(2, 16),
                              torch.zeros(2, 16), torch.tensor([1] * 32 + [0] * 32))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        int4_linear.pack_int8(torch.full((4, 16), 256), torch.ones(1, 16), torch.zeros(1, 16),
                              torch.zeros(4, dtype=torch.int64))
    linear = int4_linear.pack_int8(torch.zeros(32, 16, dtype=torch.int32), torch.ones(1, 16),
                                   torch.zeros(1, 16), torch.zeros(32, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="features"):
        linear(torch.randn(2, 31))
    with pytest.raises(RuntimeError, match="float32"):
        linear(torch.randn(2, 32, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="uint8"):
        load_ops().int8_linear(torch.randn(2, 32), linear.data.to(torch.int32),
                               linear.scale_zero, linear.group_ends, 16, None)


def test_the_provider_offers_it_for_float32_only():
    from octavo.layers.layer_ops import LAYER_OPS

    if "pack_int8_linear" not in LAYER_OPS:
        pytest.skip("core's LAYER_OPS does not list pack_int8_linear yet")
    assert CpuLayerOps.supports("pack_int8_linear", "cpu", torch.float32)
    assert not CpuLayerOps.supports("pack_int8_linear", "cpu", torch.bfloat16)
