"""The CPU product of a 4-bit group-quantized weight with float32 activations
(``csrc/int4_linear.cpp``), offered to quantization methods as the ``pack_int4_linear`` layer op.

:func:`pack` turns a 4-bit weight (codes ``[in, out]``, scales and zeros ``[G, out]``, the group
of each input feature) into the kernel's layout: panels of 16 output features, the codes of one
input feature in two int32 words (``packed [P, K, 2]``), per panel and group the 16 scales and
16 ``scale * zero`` (``scale_zero [P, G, 32]``), and where each group's run of input features
ends. The groups must be contiguous runs (``g_idx`` non-decreasing): the caller permutes a
``desc_act`` weight's input features into group order and gathers ``x``'s columns the same way.
About 0.5 byte per weight plus 8 bytes per group and output feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from octavo.layers.dense import PackedLinear
from octavo_cpu.build import load_ops

PANEL = 16  # output features per panel (csrc/int4_linear.cpp's kPanel)
NIBBLE_SHIFTS = tuple(range(0, 32, 4))


class CpuInt4Linear(PackedLinear):
    """A 4-bit weight in the kernel's layout; ``(x, bias)`` is ``x @ W.T + bias`` in float32."""

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor,
                 group_ends: torch.Tensor, out_features: int) -> None:
        super().__init__(packed, out_features, packed.shape[1])
        self.register_buffer("scale_zero", scale_zero, persistent=False)  # [P, G, 32]
        self.register_buffer("group_ends", group_ends, persistent=False)  # [G] int64
        self._int4_linear = load_ops().int4_linear  # the op itself: no Python in between

    def product(self, x, bias):
        return self._int4_linear(x, self.data, self.scale_zero, self.group_ends,
                                 self.out_features, bias)


def pack(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
         g_idx: torch.Tensor) -> CpuInt4Linear:
    """``W[o, i] = scales[g_idx[i], o] * (codes[i, o] - zeros[g_idx[i], o])`` for the kernel.

    Args:
        codes: ``[in, out]`` integers in ``[0, 16)``.
        scales: ``[G, out]`` floating scales; zeros: ``[G, out]`` zero points.
        g_idx: ``[in]`` non-decreasing group of each input feature.
    """
    in_features, out_features = codes.shape
    if bool((g_idx[1:] < g_idx[:-1]).any()):
        raise ValueError("pack_int4_linear needs g_idx in group order (non-decreasing)")
    panels = -(-out_features // PANEL)
    pad = panels * PANEL - out_features
    wide = F.pad(codes.to(torch.int64), (0, pad)).view(in_features, panels, 2, 8)
    shifts = torch.tensor(NIBBLE_SHIFTS, dtype=torch.int64)
    words = (wide << shifts).sum(-1)  # [K, P, 2], nibble i of word j: feature j * 8 + i
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    groups, counts = torch.unique_consecutive(g_idx.to(torch.int64), return_counts=True)
    scale = F.pad(scales.float()[groups], (0, pad))  # [G', P * 16], one row per run
    scale_zero = scale * F.pad(zeros.float()[groups], (0, pad))
    halves = torch.stack([scale.view(-1, panels, PANEL), scale_zero.view(-1, panels, PANEL)], 2)
    return CpuInt4Linear(words.permute(1, 0, 2).contiguous(),
                         halves.permute(1, 0, 2, 3).reshape(panels, -1, 2 * PANEL).contiguous(),
                         torch.cumsum(counts, 0), out_features)
