"""A Triton fused dequantize-and-multiply for group-quantized (GPTQ, AWQ) weights on CUDA.

Imported only where Triton is used (it imports ``triton``; ``octavo-quant`` installs without
it). The weight is in one layout whatever the checkpoint's format (the format's own unpacking,
AWQ's interleaved order included, ran once at load, :meth:`TritonKernel.build
<octavo_quant.kernels.TritonKernel.build>`):

- ``packed [ceil(K / pack), N]`` int32: ``32 // bits`` codes per word along the input features
  ``K``, lowest bits first (GPTQ's ``qweight`` layout);
- ``scales [G, N]`` (the checkpoint's float dtype) and ``zeros [G, N]`` uint8, the true zero;
- ``g_idx [K]`` int32, the group of each input feature (any order: ``desc_act``).

Each program computes a ``[BLOCK_M, BLOCK_N]`` tile of ``x @ W.T``: per ``BLOCK_K`` step it
loads the packed words, unpacks them in registers, dequantizes in float32 exactly as the
reference does (``scale * (q - zero)``, then rounded to x's dtype) and accumulates a float32
``tl.dot``. Where the groups are contiguous runs of a multiple of ``BLOCK_K`` features
(``GROUP_SIZE > 0``) one scale/zero row serves the whole step; otherwise (``desc_act``, odd
group sizes) they are gathered per feature through ``g_idx``. float32 activations multiply in
IEEE float32 (no TF32), as torch's own product does by default.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_K = 32  # a multiple of every pack factor (8 for 4-bit, 4 for 8-bit)
BLOCK_N = 64


@triton.jit
def _dequant_matmul_kernel(
    x_ptr, packed_ptr, scales_ptr, zeros_ptr, g_idx_ptr, bias_ptr, out_ptr,
    M, N, K, stride_xm, stride_om,
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,  # > 0: contiguous groups, a multiple of BLOCK_K; 0: gather
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,  # float32 activations: exact float32 products
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        k_ok = k < K
        # x: [BLOCK_M, BLOCK_K]
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + k[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        tile_ok = k_ok[:, None] & n_ok[None, :]
        # codes: [BLOCK_K, BLOCK_N]
        words = tl.load(packed_ptr + (k // PACK)[:, None].to(tl.int64) * N + rn[None, :],
                        mask=tile_ok, other=0)
        codes = (words >> ((k % PACK) * BITS)[:, None]) & MASK
        if GROUP_SIZE > 0:
            row = (k0 // GROUP_SIZE) * N + rn  # [BLOCK_N]: one group for the whole step
            scale = tl.load(scales_ptr + row, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            zero = tl.load(zeros_ptr + row, mask=n_ok, other=0).to(tl.float32)[None, :]
        else:
            group = tl.load(g_idx_ptr + k, mask=k_ok, other=0)
            rows = group[:, None].to(tl.int64) * N + rn[None, :]  # [BLOCK_K, BLOCK_N]
            scale = tl.load(scales_ptr + rows, mask=tile_ok, other=0.0).to(tl.float32)
            zero = tl.load(zeros_ptr + rows, mask=tile_ok, other=0).to(tl.float32)
        w = (scale * (codes.to(tl.float32) - zero)).to(x_ptr.dtype.element_ty)
        if IEEE:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def dequant_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                   zeros: torch.Tensor, g_idx: torch.Tensor, bias: torch.Tensor | None,
                   bits: int, group_size: int) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias)`` -> ``[M, N]`` in x's dtype; the layout is the module's.

    ``group_size``: the contiguous group size (a multiple of :data:`BLOCK_K`), or 0 to read
    each feature's group from ``g_idx``.
    """
    x = x.contiguous()
    num_rows, in_features = x.shape
    out_features = scales.shape[1]
    out = torch.empty(num_rows, out_features, dtype=x.dtype, device=x.device)
    block_m = 16 if num_rows <= 16 else (32 if num_rows <= 32 else 64)
    grid = (triton.cdiv(num_rows, block_m), triton.cdiv(out_features, BLOCK_N))
    _dequant_matmul_kernel[grid](
        x, packed, scales, zeros, g_idx, bias if bias is not None else out, out,
        num_rows, out_features, in_features, x.stride(0), out.stride(0),
        BITS=bits, GROUP_SIZE=group_size, HAS_BIAS=bias is not None,
        IEEE=x.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out
