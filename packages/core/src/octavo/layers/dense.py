"""The dense product behind every unquantized linear layer and the LM head.

On the CPU, torch's BLAS runs one wide product (many output features, few rows) markedly
slower than the same product in column blocks. Measured on the 2-core AVX2 CI machine with
torch 2.13 (median of 60, float32): ``[64 x 576] @ [576 x 3072]`` took 6.7 ms whole and
3.9 ms in 1536-wide blocks; the 49152-wide LM head of SmolLM2 took 95 ms whole and 54 ms in
blocks. Each output column is the same dot product either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CPU_SPLIT_ABOVE = 2048  # output features above which the CPU product is split
CPU_BLOCK = 1536


def dense_linear(x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` with ``weight: [out_features, in_features]``."""
    if x.device.type != "cpu" or weight.shape[0] <= CPU_SPLIT_ABOVE:
        return F.linear(x, weight, bias)
    out = torch.cat([F.linear(x, block) for block in weight.split(CPU_BLOCK)], dim=-1)
    return out + bias if bias is not None else out
