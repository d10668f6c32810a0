"""The CPU products of a 4-bit or 8-bit group-quantized weight with float32 activations
(``csrc/int4_linear.cpp``, ``csrc/int8_linear.cpp``), offered to quantization methods as the
``pack_int4_linear`` and ``pack_int8_linear`` layer ops.

:func:`pack` turns a 4-bit weight (codes ``[in, out]``, scales and zeros ``[G, out]``, the group
of each input feature) into the 4-bit kernel's layout: panels of 16 output features, the codes
of one input feature in two int32 words (``packed [P, K, 2]``), per panel and group the 16
scales and 16 ``scale * zero`` (``scale_zero [P, G, 32]``), and where each group's run of input
features ends. :func:`pack_int8` does the same for an 8-bit weight with a byte per code
(``packed [P, K, 16]`` uint8) and the same ``scale_zero`` and group ends. The groups must be
contiguous runs (``g_idx`` non-decreasing): the caller permutes a ``desc_act`` weight's input
features into group order and gathers ``x``'s columns the same way. About 0.5 (4-bit) or 1
(8-bit) byte per weight plus 8 bytes per group and output feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from octavo.layers.dense import PackedLinear
from octavo_cpu.build import load_ops

PANEL = 16  # output features per panel (the kernels' kPanel)
NIBBLE_SHIFTS = tuple(range(0, 32, 4))
# The 8-bit kernel sums codes * x over a run of one group before it scales the sum (few rows):
# runs of at most 128 keep those sums, and their rounding, as small as a group of 128's.
INT8_MAX_RUN = 128


class CpuQuantLinear(PackedLinear):
    """A quantized weight in a kernel's layout; ``(x, bias)`` is ``x @ W.T + bias`` in
    float32. Subclasses name the op (``torch.ops.octavo_cpu.<op>``)."""

    op = ""

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor,
                 group_ends: torch.Tensor, out_features: int) -> None:
        super().__init__(packed, out_features, packed.shape[1])
        self.register_buffer("scale_zero", scale_zero, persistent=False)  # [P, G, 32]
        self.register_buffer("group_ends", group_ends, persistent=False)  # [G] int64
        self._kernel = getattr(load_ops(), self.op)  # the op itself: no Python in between

    def product(self, x, bias):
        return self._kernel(x, self.data, self.scale_zero, self.group_ends, self.out_features,
                            bias)


class CpuInt4Linear(CpuQuantLinear):
    """A 4-bit weight: ``packed [P, K, 2]`` int32 (``csrc/int4_linear.cpp``)."""

    op = "int4_linear"


class CpuInt8Linear(CpuQuantLinear):
    """An 8-bit weight: ``packed [P, K, 16]`` uint8 (``csrc/int8_linear.cpp``)."""

    op = "int8_linear"


def pack(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
         g_idx: torch.Tensor) -> CpuInt4Linear:
    """``W[o, i] = scales[g_idx[i], o] * (codes[i, o] - zeros[g_idx[i], o])`` for the 4-bit
    kernel.

    Args:
        codes: ``[in, out]`` integers in ``[0, 16)``.
        scales: ``[G, out]`` floating scales; zeros: ``[G, out]`` zero points.
        g_idx: ``[in]`` non-decreasing group of each input feature.
    """
    in_features, out_features = codes.shape
    _check_group_order(g_idx, "pack_int4_linear")
    panels, pad = _panels(out_features)
    wide = F.pad(codes.to(torch.int64), (0, pad)).view(in_features, panels, 2, 8)
    shifts = torch.tensor(NIBBLE_SHIFTS, dtype=torch.int64)
    words = (wide << shifts).sum(-1)  # [K, P, 2], nibble i of word j: feature j * 8 + i
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return CpuInt4Linear(words.permute(1, 0, 2).contiguous(),
                         *_scale_zero(scales, zeros, g_idx, panels, pad), out_features)


def pack_int8(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              g_idx: torch.Tensor) -> CpuInt8Linear:
    """``W[o, i] = scales[g_idx[i], o] * (codes[i, o] - zeros[g_idx[i], o])`` for the 8-bit
    kernel; as :func:`pack`, with codes in ``[0, 256)``."""
    in_features, out_features = codes.shape
    _check_group_order(g_idx, "pack_int8_linear")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 255):
        raise ValueError("pack_int8_linear needs codes in [0, 256)")
    panels, pad = _panels(out_features)
    data = F.pad(codes.to(torch.uint8), (0, pad)).view(in_features, panels, PANEL)
    return CpuInt8Linear(data.permute(1, 0, 2).contiguous(),
                         *_scale_zero(scales, zeros, g_idx, panels, pad, INT8_MAX_RUN),
                         out_features)


def _check_group_order(g_idx: torch.Tensor, op: str) -> None:
    if bool((g_idx[1:] < g_idx[:-1]).any()):
        raise ValueError(f"{op} needs g_idx in group order (non-decreasing)")


def _panels(out_features: int) -> tuple[int, int]:
    """Panels of 16 output features, and the zero padding of the last."""
    panels = -(-out_features // PANEL)
    return panels, panels * PANEL - out_features


def _scale_zero(scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, panels: int,
                pad: int, max_run: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale_zero [P, G', 32]`` (per panel and run of one group: the 16 scales, then the 16
    ``scale * zero``) and the end of each run ``[G']`` int64; runs longer than ``max_run`` are
    split (a group of -1 into runs of ``max_run``)."""
    groups, counts = torch.unique_consecutive(g_idx.to(torch.int64), return_counts=True)
    if max_run is not None and bool((counts > max_run).any()):
        pieces = [(int(g), min(max_run, int(c) - start)) for g, c in zip(groups, counts)
                  for start in range(0, int(c), max_run)]
        groups = torch.tensor([g for g, _ in pieces], dtype=torch.int64)
        counts = torch.tensor([c for _, c in pieces], dtype=torch.int64)
    scale = F.pad(scales.float()[groups], (0, pad))  # [G', P * 16], one row per run
    scale_zero = scale * F.pad(zeros.float()[groups], (0, pad))
    halves = torch.stack([scale.view(-1, panels, PANEL), scale_zero.view(-1, panels, PANEL)], 2)
    return (halves.permute(1, 0, 2, 3).reshape(panels, -1, 2 * PANEL).contiguous(),
            torch.cumsum(counts, 0))
