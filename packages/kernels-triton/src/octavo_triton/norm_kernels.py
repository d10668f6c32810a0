"""Triton RMSNorm, optionally fused with the residual add before it.

Rounds exactly where ``octavo.layers.norm`` does: the sum ``x + residual`` and the normalized
value are rounded to the input dtype, the scale multiply to the output dtype, so the result
equals the torch code's up to the order of the float32 mean of squares.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_triton.launch import interpreted


@triton.jit
def _load_input(x_ptr, residual_ptr, rows, col, mask, stride_x, stride_r,
                HAS_RESIDUAL: tl.constexpr):
    """A [rows, cols] tile of ``x`` (plus ``residual``, rounded to x's dtype as torch adds)."""
    h = tl.load(x_ptr + rows[:, None] * stride_x + col[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + rows[:, None] * stride_r + col[None, :], mask=mask,
                    other=0.0)
        h = (h.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
    return h


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr,
    num_rows, hidden, eps,
    stride_x, stride_r, stride_o, stride_s,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_T: tl.constexpr,  # rows per program
    BLOCK_H: tl.constexpr,  # hidden columns per step
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < num_rows
    rows = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_H)

    # Pass 1: mean of squares (and the residual sum, stored as the next residual).
    sum_sq = tl.zeros([BLOCK_T], dtype=tl.float32)
    for start in range(0, hidden, BLOCK_H):
        col = start + cols
        mask = row_ok[:, None] & (col < hidden)[None, :]
        h = _load_input(x_ptr, residual_ptr, rows, col, mask, stride_x, stride_r, HAS_RESIDUAL)
        if HAS_RESIDUAL:
            tl.store(sum_ptr + rows[:, None] * stride_s + col[None, :], h, mask=mask)
        h = h.to(tl.float32)
        sum_sq += tl.sum(h * h, axis=1)
    rstd = tl.rsqrt(sum_sq / hidden + eps)

    # Pass 2: normalize and scale (the sum is recomputed rather than read back).
    for start in range(0, hidden, BLOCK_H):
        col = start + cols
        mask = row_ok[:, None] & (col < hidden)[None, :]
        h = _load_input(x_ptr, residual_ptr, rows, col, mask, stride_x, stride_r, HAS_RESIDUAL)
        normed = (h.to(tl.float32) * rstd[:, None]).to(x_ptr.dtype.element_ty)
        w = tl.load(weight_ptr + col, mask=col < hidden, other=0.0)
        out = w.to(tl.float32)[None, :] * normed.to(tl.float32)
        tl.store(out_ptr + rows[:, None] * stride_o + col[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as [rows, hidden] with unit column stride (a view when possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
            eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"RMSNorm weight has shape {tuple(weight.shape)}; expected "
                         f"({x.shape[-1]},) for inputs of shape {tuple(x.shape)}")
    hidden = x.shape[-1]
    x2 = _rows(x)
    num_rows = x2.shape[0]
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype),
                      device=x.device)
    out2 = out.view(-1, hidden)
    total = total2 = None
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} differs from the "
                             f"input's {tuple(x.shape)}")
        residual = _rows(residual)
        total = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        total2 = total.view(-1, hidden)
    if num_rows == 0:
        return out, total
    block_h = min(triton.next_power_of_2(hidden), 4096)
    if interpreted():  # the interpreter pays per program: many rows each
        block_t = min(triton.next_power_of_2(num_rows), max(1, 65536 // block_h))
    else:
        block_t = 1 if hidden >= 1024 else max(1, min(16, 1024 // block_h))
    _rms_norm_kernel[(triton.cdiv(num_rows, block_t),)](
        x2, residual if residual is not None else x2, weight.contiguous(), out2,
        total2 if total2 is not None else out2,
        num_rows, hidden, float(eps),
        x2.stride(0), residual.stride(0) if residual is not None else 0, out2.stride(0),
        total2.stride(0) if total2 is not None else 0,
        HAS_RESIDUAL=residual is not None, BLOCK_T=block_t, BLOCK_H=block_h,
        num_warps=8 if block_h >= 2048 else 4,
    )
    return out, total


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dimension of ``x [..., hidden]``."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` in one pass over memory."""
    out, total = _launch(x, residual, weight, eps)
    return out, total
