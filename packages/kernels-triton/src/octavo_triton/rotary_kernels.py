"""Triton rotary embedding (RoPE): neox (halves) and GPT-J (even/odd pairs) styles, partial.

Rounds op by op where ``octavo.layers.rotary.apply_rotary_torch`` does (cos/sin to the input
dtype, each product, then the sum), so both give the same bits in every dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_triton.launch import interpreted


@triton.jit
def _rotary_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr,
    num_rows, num_heads,
    stride_xt, stride_xh, stride_xd,
    stride_ct, stride_st,
    stride_ot, stride_oh,
    HEAD_SIZE: tl.constexpr,
    HALF: tl.constexpr,  # rotary_dim // 2
    HALF_PAD: tl.constexpr,
    PASS_PAD: tl.constexpr,  # next power of two >= head_size - rotary_dim (0: none)
    IS_NEOX: tl.constexpr,
    BLOCK_R: tl.constexpr,  # (token, head) rows per program
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < num_rows
    token = (rows // num_heads).to(tl.int64)
    head = (rows % num_heads).to(tl.int64)
    x_row = x_ptr + token * stride_xt + head * stride_xh  # [BLOCK_R] pointers
    o_row = out_ptr + token * stride_ot + head * stride_oh
    dtype = x_ptr.dtype.element_ty

    i = tl.arange(0, HALF_PAD)
    mask = row_ok[:, None] & (i < HALF)[None, :]
    if IS_NEOX:  # dims i and i + HALF
        d1 = i
        d2 = i + HALF
    else:  # dims 2i and 2i + 1
        d1 = 2 * i
        d2 = 2 * i + 1
    cos = tl.load(cos_ptr + token[:, None] * stride_ct + i[None, :], mask=mask, other=0.0)
    sin = tl.load(sin_ptr + token[:, None] * stride_st + i[None, :], mask=mask, other=0.0)
    cos = cos.to(dtype).to(tl.float32)
    sin = sin.to(dtype).to(tl.float32)
    x1 = tl.load(x_row[:, None] + d1[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row[:, None] + d2[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
    a = (x1 * cos).to(dtype).to(tl.float32)
    b = (x2 * sin).to(dtype).to(tl.float32)
    c = (x2 * cos).to(dtype).to(tl.float32)
    e = (x1 * sin).to(dtype).to(tl.float32)
    tl.store(o_row[:, None] + d1[None, :], (a - b).to(dtype), mask=mask)
    tl.store(o_row[:, None] + d2[None, :], (c + e).to(dtype), mask=mask)

    if PASS_PAD > 0:  # partial rotary: the remaining dims pass through
        j = 2 * HALF + tl.arange(0, PASS_PAD)
        pass_mask = row_ok[:, None] & (j < HEAD_SIZE)[None, :]
        rest = tl.load(x_row[:, None] + j[None, :] * stride_xd, mask=pass_mask)
        tl.store(o_row[:, None] + j[None, :], rest, mask=pass_mask)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           is_neox_style: bool = True) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` dims of every head; returns a new contiguous tensor.

    x: [num_tokens, num_heads, head_size] (any strides); cos, sin: [num_tokens, rotary_dim // 2]
    with unit stride in the last dimension.
    """
    num_tokens, num_heads, head_size = x.shape
    half = cos.shape[-1]
    if cos.shape != (num_tokens, half) or sin.shape != cos.shape:
        raise ValueError(f"cos/sin must be [num_tokens={num_tokens}, rotary_dim // 2]; got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    if not 0 < 2 * half <= head_size:
        raise ValueError(f"rotary_dim {2 * half} must be in 1..head_size {head_size}")
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    num_rows = num_tokens * num_heads
    if num_rows == 0:
        return out
    rest = head_size - 2 * half
    half_pad = triton.next_power_of_2(half)
    if interpreted():  # the interpreter pays per program: many rows each
        block_r = min(triton.next_power_of_2(num_rows), max(1, 16384 // half_pad))
    else:
        block_r = max(1, min(32, 2048 // half_pad))
    _rotary_kernel[(triton.cdiv(num_rows, block_r),)](
        x, cos, sin, out,
        num_rows, num_heads,
        *x.stride(), cos.stride(0), sin.stride(0), out.stride(0), out.stride(1),
        HEAD_SIZE=head_size, HALF=half, HALF_PAD=half_pad,
        PASS_PAD=triton.next_power_of_2(rest) if rest else 0,
        IS_NEOX=bool(is_neox_style), BLOCK_R=block_r,
        num_warps=4,
    )
    return out
