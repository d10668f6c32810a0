"""The dense product behind every unquantized linear layer and the LM head.

On the CPU, torch's BLAS runs one wide product (many output features, few rows) markedly
slower than the same product in column blocks. Measured on the 2-core AVX2 CI machine with
torch 2.13 (median of 60, float32): ``[64 x 576] @ [576 x 3072]`` took 6.7 ms whole and
3.9 ms in 1536-wide blocks; the 49152-wide LM head of SmolLM2 took 95 ms whole and 54 ms in
blocks. Each output column is the same dot product either way.

Re-measured on 2026-11-30 on a 2-core AMD EPYC CI machine (median of 30, float32, idle): the
49152-wide LM head took 29.0 / 60.8 / 98.7 ms whole against 21.1 / 45.8 / 81.0 ms in blocks
for 16 / 64 / 128 rows, but a 3072-wide MLP product gained nothing (0.79 vs 0.83 ms at 16
rows, 4.56 vs 4.89 ms at 128). So only products wider than 8192 features (LM heads) split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CPU_SPLIT_ABOVE = 8192  # output features above which the CPU product is split
CPU_BLOCK = 1536


def dense_linear(x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` with ``weight: [out_features, in_features]``."""
    if x.device.type != "cpu" or weight.shape[0] <= CPU_SPLIT_ABOVE:
        return F.linear(x, weight, bias)
    out = torch.cat([F.linear(x, block) for block in weight.split(CPU_BLOCK)], dim=-1)
    return out + bias if bias is not None else out
