"""The format-independent form of a group-quantized weight, and its dequantization."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class UnpackedWeight:
    """A group-quantized weight with every integer unpacked.

    ``W[o, i] = scales[g_idx[i], o] * (qweight[i, o] - zeros[g_idx[i], o])``

    Attributes:
        qweight: ``[in_features, out_features]`` int32 codes in ``[0, 2**bits)``.
        zeros: ``[num_groups, out_features]`` int32 zero points (true zeros, not ``z - 1``).
        scales: ``[num_groups, out_features]`` floating scales.
        g_idx: ``[in_features]`` int64 group of each input feature.
    """

    qweight: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor
    bits: int

    @property
    def in_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``[out_features, in_features]``, computed in float32."""
        scales = self.scales.float()[self.g_idx]  # [in, out]
        codes = (self.qweight - self.zeros[self.g_idx]).float()
        return (scales * codes).t().contiguous().to(dtype)
