"""Triton kernel that scatters new K/V rows into the paged KV cache (``reshape_and_cache``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_triton.launch import interpreted


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_mapping_ptr,
    num_tokens,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    HEAD_SIZE: tl.constexpr,
    ROW_SIZE: tl.constexpr,  # num_kv_heads * head_size
    ROW_PAD: tl.constexpr,  # next power of two >= ROW_SIZE
    BLOCK_SIZE: tl.constexpr,  # KV cache block size
    BLOCK_T: tl.constexpr,  # tokens per program
):
    """Each program copies ``BLOCK_T`` tokens' rows of ``num_kv_heads * head_size`` values."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    slot = tl.load(slot_mapping_ptr + offs_t, mask=offs_t < num_tokens, other=-1).to(tl.int64)
    token_ok = slot >= 0  # negative slots (padding) are skipped

    offs_j = tl.arange(0, ROW_PAD)  # flattened (head, dim) index
    head = offs_j // HEAD_SIZE
    dim = offs_j % HEAD_SIZE
    mask = token_ok[:, None] & (offs_j < ROW_SIZE)[None, :]  # [BLOCK_T, ROW_PAD]

    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    tok = offs_t.to(tl.int64)

    k = tl.load(key_ptr + tok[:, None] * stride_kt + (head * stride_kh + dim * stride_kd)[None, :],
                mask=mask)
    k_dst = (key_cache_ptr + (block * stride_kcb + offset * stride_kcs)[:, None]
             + (head * stride_kch + dim * stride_kcd)[None, :])
    tl.store(k_dst, k.to(key_cache_ptr.dtype.element_ty), mask=mask)

    v = tl.load(value_ptr + tok[:, None] * stride_vt + (head * stride_vh + dim * stride_vd)[None, :],
                mask=mask)
    v_dst = (value_cache_ptr + (block * stride_vcb + offset * stride_vcs)[:, None]
             + (head * stride_vch + dim * stride_vcd)[None, :])
    tl.store(v_dst, v.to(value_cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size], any strides
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size], any strides
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int; negative slots are skipped
) -> None:
    """Write ``key``/``value`` into the paged cache at ``slot_mapping`` (in place)."""
    num_tokens, num_kv_heads, head_size = key.shape
    if num_tokens == 0:
        return
    if slot_mapping.shape[0] < num_tokens:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} slots for {num_tokens} tokens")
    row_size = num_kv_heads * head_size
    row_pad = triton.next_power_of_2(row_size)
    if interpreted():
        block_t = triton.next_power_of_2(num_tokens)  # one program: the interpreter pays per program
        block_t = min(block_t, max(1, 65536 // row_pad))
    else:
        block_t = max(1, min(16, 8192 // row_pad))
    grid = (triton.cdiv(num_tokens, block_t),)
    _reshape_and_cache_kernel[grid](
        key, value, key_cache, value_cache, slot_mapping,
        num_tokens,
        *key.stride(), *value.stride(),
        *key_cache.stride(), *value_cache.stride(),
        HEAD_SIZE=head_size, ROW_SIZE=row_size, ROW_PAD=row_pad,
        BLOCK_SIZE=key_cache.shape[1], BLOCK_T=block_t,
        num_warps=4,
    )
