"""octavo_cpu's packed dense product against ``F.linear`` in float64.

The bound is the worst case of any float32 summation order of K products (plus the bias):
``|y - ref| <= (K + 1) * eps32 * (|x| @ |W|.T + |b|)``, so it holds for the kernel's blocked
order, whatever the shape; the typical error is far below it, which the second check
(relative to F.linear's own float32 error) keeps honest.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from octavo_cpu.build import missing_toolchain

if missing_toolchain() is not None:
    pytest.skip(missing_toolchain(), allow_module_level=True)

from octavo_cpu import dense  # noqa: E402

EPS32 = torch.finfo(torch.float32).eps


def random_problem(m: int, n: int, k: int, bias: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=generator)
    weight = torch.randn(n, k, generator=generator) / max(k, 1) ** 0.5
    b = torch.randn(n, generator=generator) if bias else None
    return x, weight, b


def assert_within_float32(got: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None) -> None:
    x64, w64 = x.double(), weight.double()
    b64 = bias.double() if bias is not None else None
    ref = F.linear(x64, w64, b64)
    scale = F.linear(x64.abs(), w64.abs(), b64.abs() if b64 is not None else None)
    k = x.shape[-1]
    bound = (k + 1) * EPS32 * scale + 1e-30
    assert got.dtype == torch.float32 and got.shape == ref.shape
    error = (got.double() - ref).abs()
    worst = (error / bound).max().item() if error.numel() else 0.0
    assert worst <= 1.0, f"error {worst:.3g} x the float32 bound"
    # Typical accuracy: no worse than a few times torch's own float32 product.
    torch_error = (F.linear(x, weight, bias).double() - ref).abs().max().item()
    assert error.max().item() <= 8 * torch_error + 4 * EPS32 * scale.max().item()


SHAPES = [  # (m, n, k)
    (1, 1, 1), (1, 16, 1), (3, 17, 1), (1, 5, 3), (2, 33, 7), (1, 576, 576), (1, 960, 576),
    (1, 576, 1536), (4, 3072, 576), (5, 100, 37), (6, 48, 64), (7, 31, 129), (11, 64, 8),
    (12, 15, 100), (13, 47, 96), (16, 576, 576), (17, 200, 33), (31, 129, 250),
    (64, 96, 1536), (100, 16, 20), (127, 257, 63), (200, 8, 300), (300, 70, 577),
]


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_float64_reference(m, n, k, bias):
    x, weight, b = random_problem(m, n, k, bias, seed=m * 1000 + n * 7 + k)
    packed = dense.pack(weight)
    assert packed.shape == (n, k)
    assert_within_float32(dense.linear(x, packed, b), x, weight, b)


@pytest.mark.parametrize("m", list(range(1, 34)) + [47, 64, 65, 97, 128, 255, 256, 300])
def test_every_row_count(m):
    """Each row-block split (1..6 rows per block on AVX2, 1..12 on AVX-512) and chunking."""
    x, weight, b = random_problem(m, 50, 70, True, seed=m)
    assert_within_float32(dense.linear(x, dense.pack(weight), b), x, weight, b)


def test_rows_split_over_threads_when_few_panels():
    """One panel (n <= NR), many rows: the rows are split among threads."""
    x, weight, b = random_problem(1500, 3, 512, True, seed=3)
    assert_within_float32(dense.linear(x, dense.pack(weight), b), x, weight, b)


def test_large_k_is_blocked():
    x, weight, b = random_problem(40, 40, 5000, True, seed=4)
    assert_within_float32(dense.linear(x, dense.pack(weight), b), x, weight, b)


@pytest.mark.parametrize("layout", ["column_slice", "transposed", "row_step"])
def test_non_contiguous_x(layout):
    generator = torch.Generator().manual_seed(5)
    k, n = 70, 45
    base = torch.randn(40, 3 * k, generator=generator)
    if layout == "column_slice":  # row stride 3k, unit stride along k
        x = base[:, k:2 * k]
    elif layout == "transposed":  # unit stride along rows
        x = torch.randn(k, 40, generator=generator).t()
    else:  # every other row
        x = base[::2, :k]
    assert not x.is_contiguous()
    weight = torch.randn(n, k, generator=generator)
    b = torch.randn(n, generator=generator)
    assert_within_float32(dense.linear(x, dense.pack(weight), b), x, weight, b)


def test_leading_dims_and_empty():
    generator = torch.Generator().manual_seed(6)
    weight = torch.randn(20, 12, generator=generator)
    packed = dense.pack(weight)
    x = torch.randn(2, 3, 12, generator=generator)
    out = dense.linear(x, packed)
    assert out.shape == (2, 3, 20)
    assert_within_float32(out.reshape(6, 20), x.reshape(6, 12), weight, None)
    assert dense.linear(torch.empty(0, 12), packed).shape == (0, 20)


def test_zero_in_features():
    packed = dense.pack(torch.empty(5, 0))
    b = torch.arange(5.0)
    torch.testing.assert_close(dense.linear(torch.empty(3, 0), packed, b), b.expand(3, 5))
    torch.testing.assert_close(dense.linear(torch.empty(3, 0), packed), torch.zeros(3, 5))


def test_linear_out_writes_a_column_slice():
    x, weight, b = random_problem(9, 40, 33, True, seed=7)
    wide = torch.full((9, 100), float("nan"))
    dense.linear_out(wide[:, 30:70], x, dense.pack(weight), b)
    assert_within_float32(wide[:, 30:70], x, weight, b)
    assert wide[:, :30].isnan().all() and wide[:, 70:].isnan().all()


def test_packed_layout():
    nr = dense.panel_width()
    assert nr in (8, 16, 32)
    weight = torch.randn(nr + 3, 5)
    packed = dense.pack(weight)
    assert packed.data.shape == (2, 5, nr) and packed.data.is_contiguous()
    torch.testing.assert_close(packed.data[0], weight[:nr].t(), rtol=0, atol=0)
    torch.testing.assert_close(packed.data[1, :, :3], weight[nr:].t(), rtol=0, atol=0)
    assert (packed.data[1, :, 3:] == 0).all()


def test_input_checks():
    packed = dense.pack(torch.randn(20, 12))
    with pytest.raises(RuntimeError, match="features"):
        dense.linear(torch.randn(3, 13), packed)
    with pytest.raises(RuntimeError, match="float32"):
        dense.linear(torch.randn(3, 12, dtype=torch.float64), packed)
    with pytest.raises(RuntimeError, match="bias"):
        dense.linear(torch.randn(3, 12), packed, torch.randn(21))
    with pytest.raises(RuntimeError, match="panels"):
        dense.linear(torch.randn(3, 12), dense.PackedWeight(packed.data, 40, 12))
    with pytest.raises(ValueError, match="float32"):
        dense.pack(torch.randn(4, 4, dtype=torch.bfloat16))


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts(threads):
    """Panels split over another number of threads (uneven groups), and rows when few panels."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # small products run on one thread; these are large enough to split
        for m, n, k in [(1, 50, 33), (1, 300, 256), (20, 100, 700), (1500, 10, 300)]:
            x, weight, b = random_problem(m, n, k, True, seed=threads * 100 + m)
            assert_within_float32(dense.linear(x, dense.pack(weight), b), x, weight, b)
    finally:
        torch.set_num_threads(before)
