"""dense_linear: the CPU column-block split computes the same product as F.linear."""

import pytest
import torch
import torch.nn.functional as F

from octavo.layers.dense import CPU_BLOCK, CPU_SPLIT_ABOVE, dense_linear


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("out_features", [CPU_SPLIT_ABOVE, CPU_SPLIT_ABOVE + 1, CPU_SPLIT_ABOVE + CPU_BLOCK + 5])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_f_linear(rows, out_features, bias):
    g = torch.Generator().manual_seed(rows * out_features)
    x = torch.randn(rows, 96, generator=g)
    w = torch.randn(out_features, 96, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    out = dense_linear(x, w, b)
    assert out.shape == (rows, out_features)
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_leading_dims_are_kept():
    x = torch.randn(2, 3, 16)
    w = torch.randn(CPU_SPLIT_ABOVE + 100, 16)
    torch.testing.assert_close(dense_linear(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)
