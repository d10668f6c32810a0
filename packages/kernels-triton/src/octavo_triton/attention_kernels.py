"""Triton PagedAttention for packed batches that mix prefill chunks and decodes.

One kernel serves both: a program owns a tile of ``BLOCK_Q`` query tokens of one request and
one KV head, and its rows are the ``BLOCK_Q * group`` (token, query head) pairs that share that
KV head, so each K/V tile read from the paged cache serves the whole GQA group. The program
walks the request's KV positions in tiles of ``BLOCK_N`` with an online softmax in float32.
Decodes (one query token) use small ``BLOCK_M``; a batch that mixes decodes with prefill
chunks runs as two launches of the same kernel, each skipping the other's requests by query
length. When there are too few programs to fill the GPU, the KV range is split over
``num_splits`` programs whose partial results a second kernel merges by their log-sum-exp
(flash-decoding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_triton.launch import interpreted, multiprocessor_count

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _find_seq(query_start_loc_ptr, tile_id, num_seqs, BLOCK_Q: tl.constexpr):
    """The request that owns query tile ``tile_id``.

    Request ``i`` owns tiles ``query_start_loc[i] // BLOCK_Q + i`` up to the next request's
    first tile; that is at least ``cdiv(query_len_i, BLOCK_Q)`` tiles, so the grid needs only
    ``num_tokens // BLOCK_Q + num_seqs`` programs and no host-side tile table.
    """
    lo = tile_id * 0  # an int32 tensor (not a constexpr) so the loop can carry it
    hi = lo + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_tile <= tile_id:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _paged_attention_kernel(
    out_ptr, part_out_ptr, part_lse_ptr,
    q_ptr, k_cache_ptr, v_cache_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, alibi_slopes_ptr,
    scale, soft_cap, num_seqs, min_query_len, max_query_len,
    stride_qt, stride_qh, stride_qd,
    stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_bt,
    stride_ps, stride_pt, stride_ph,  # part_out: [num_splits, num_tokens, num_heads, HEAD_PAD]
    stride_ls, stride_lt,  # part_lse: [num_splits, num_tokens, num_heads]
    GROUP: tl.constexpr,  # query heads per KV head
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # KV cache block size
    BLOCK_M: tl.constexpr,  # rows per program: BLOCK_Q tokens x GROUP heads, padded
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,  # KV positions per inner step
    NUM_SPLITS: tl.constexpr,
    SLIDING_WINDOW: tl.constexpr,  # 0: none
    USE_ALIBI: tl.constexpr,
    USE_SOFT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile_id = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq = _find_seq(query_start_loc_ptr, tile_id, num_seqs, BLOCK_Q)
    q_begin = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_begin
    q_off = (tile_id - (q_begin // BLOCK_Q + seq)) * BLOCK_Q  # first query of this tile
    if (q_off >= q_len) | (q_len < min_query_len) | (q_len > max_query_len):
        return  # past this request's queries, or the request belongs to another launch
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_len = seq_len - q_len  # positions cached before this step's tokens

    # Rows: (query token, head in group) pairs.
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    q_idx = q_off + offs_m // GROUP  # [BLOCK_M] query index within the request
    head = kv_head * GROUP + offs_m % GROUP  # [BLOCK_M]
    row_ok = (offs_m < BLOCK_Q * GROUP) & (q_idx < q_len)
    dim_ok = offs_d < HEAD_SIZE
    q_pos = ctx_len + q_idx  # [BLOCK_M] absolute positions
    token = (q_begin + q_idx).to(tl.int64)

    # q: [BLOCK_M, HEAD_PAD]
    q = tl.load(q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh
                + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    # KV positions this tile can see: [kv_lo, kv_hi)
    kv_hi = ctx_len + tl.minimum(q_off + BLOCK_Q, q_len)
    kv_lo = 0
    if SLIDING_WINDOW > 0:
        kv_lo = tl.maximum(ctx_len + q_off - SLIDING_WINDOW + 1, 0)
    num_kv_tiles = tl.cdiv(kv_hi - kv_lo, BLOCK_N)
    tiles_per_split = tl.cdiv(num_kv_tiles, NUM_SPLITS)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, num_kv_tiles)

    if USE_ALIBI:
        slope = tl.load(alibi_slopes_ptr + head, mask=row_ok, other=0.0).to(tl.float32) * LOG2E

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2
    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    qk_scale = scale * LOG2E
    block_table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt

    for t in range(tile_lo, tile_hi):
        k_pos = kv_lo + t * BLOCK_N + offs_n  # [BLOCK_N]
        k_ok = k_pos < kv_hi
        block = tl.load(block_table_row + k_pos // BLOCK_SIZE, mask=k_ok, other=0).to(tl.int64)
        in_block = k_pos % BLOCK_SIZE

        # k: [HEAD_PAD, BLOCK_N]
        k_base = block * stride_kb + in_block * stride_ks + kv_head * stride_kh
        k = tl.load(k_cache_ptr + k_base[None, :] + offs_d[:, None] * stride_kd,
                    mask=k_ok[None, :] & dim_ok[:, None], other=0.0)
        s = tl.dot(q, k, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        if USE_SOFT_CAP:
            s = s * (scale / soft_cap)
            e = tl.exp(-2.0 * tl.abs(s))  # tanh(|s|) = (1 - e) / (1 + e), without overflow
            tanh = (1.0 - e) / (1.0 + e)
            s = soft_cap * LOG2E * tl.where(s < 0, -tanh, tanh)
        else:
            s = s * qk_scale
        if USE_ALIBI:
            s += slope[:, None] * (k_pos[None, :] - q_pos[:, None]).to(tl.float32)
        visible = k_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
        if SLIDING_WINDOW > 0:
            visible = visible & (k_pos[None, :] > q_pos[:, None] - SLIDING_WINDOW)
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)

        # v: [BLOCK_N, HEAD_PAD]
        v_base = block * stride_vb + in_block * stride_vs + kv_head * stride_vh
        v = tl.load(v_cache_ptr + v_base[:, None] + offs_d[None, :] * stride_vd,
                    mask=k_ok[:, None] & dim_ok[None, :], other=0.0)
        p = p.to(v_cache_ptr.dtype.element_ty)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    acc = acc / l_safe[:, None]
    if NUM_SPLITS == 1:
        o_ptr = out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptr, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    else:
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))  # log2 units
        base = split * stride_ps + token * stride_pt + head * stride_ph  # [BLOCK_M]
        tl.store(part_out_ptr + base[:, None] + offs_d[None, :], acc, mask=row_ok[:, None])
        tl.store(part_lse_ptr + split * stride_ls + token * stride_lt + head, lse, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    out_ptr, part_out_ptr, part_lse_ptr,
    num_heads,
    stride_ot, stride_oh,
    stride_ps, stride_pt, stride_ph,
    stride_ls, stride_lt,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """Combine the split partial outputs of one token, all heads, weighted by exp2(lse)."""
    token = tl.program_id(0).to(tl.int64)
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    head_ok = offs_h < num_heads

    lse_max = tl.full([HEADS_PAD], float("-inf"), dtype=tl.float32)
    for s in range(NUM_SPLITS):
        lse = tl.load(part_lse_ptr + s * stride_ls + token * stride_lt + offs_h, mask=head_ok,
                      other=float("-inf"))
        lse_max = tl.maximum(lse_max, lse)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)

    acc = tl.zeros([HEADS_PAD, HEAD_PAD], dtype=tl.float32)
    total = tl.zeros([HEADS_PAD], dtype=tl.float32)
    for s in range(NUM_SPLITS):
        lse = tl.load(part_lse_ptr + s * stride_ls + token * stride_lt + offs_h, mask=head_ok,
                      other=float("-inf"))
        w = tl.exp2(lse - lse_max)  # [HEADS_PAD]
        part = tl.load(part_out_ptr + s * stride_ps + token * stride_pt
                       + offs_h[:, None] * stride_ph + offs_d[None, :],
                       mask=head_ok[:, None], other=0.0)
        acc += w[:, None] * part
        total += w
    total = tl.where(total == 0.0, 1.0, total)
    out = acc / total[:, None]
    o_ptr = out_ptr + token * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptr, out.to(out_ptr.dtype.element_ty),
             mask=head_ok[:, None] & (offs_d < HEAD_SIZE)[None, :])


def paged_attention(
    out: torch.Tensor,  # [>= num_tokens, num_heads, head_size], last dim contiguous
    query: torch.Tensor,  # [>= num_tokens, num_heads, head_size], any strides
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    num_tokens: int,
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    *,
    min_query_len: int | None = None,
    alibi_slopes: torch.Tensor | None = None,  # [num_heads] float32
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Causal paged attention of a packed batch into ``out``; returns ``out``.

    ``min_query_len`` (the shortest query of the batch, known on the host) lets a batch that
    mixes decodes and prefill chunks run as two launches with tiles sized for each.
    ``config`` overrides the launch choices of :func:`plan_launches`.
    """
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    assert out.stride(-1) == 1, "out must be contiguous in its last dimension"
    _, num_heads, head_size = query.shape
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    head_pad = max(16, triton.next_power_of_2(head_size))

    for cfg in plan_launches(query, num_kv_heads, num_tokens, num_seqs, max_query_len,
                             max_seq_len, min_query_len, config):
        block_m = max(cfg["block_m"], triton.next_power_of_2(group), 16)
        block_q = block_m // group
        num_splits = max(1, int(cfg["num_splits"]))
        if num_splits > 1:
            part_out = torch.empty(num_splits, num_tokens, num_heads, head_pad,
                                   dtype=torch.float32, device=query.device)
            part_lse = torch.empty(num_splits, num_tokens, num_heads,
                                   dtype=torch.float32, device=query.device)
            part_strides = (*part_out.stride()[:3], *part_lse.stride()[:2])
        else:
            part_out = part_lse = out  # unused
            part_strides = (0, 0, 0, 0, 0)

        grid = (num_tokens // block_q + num_seqs, num_kv_heads, num_splits)
        _paged_attention_kernel[grid](
            out, part_out, part_lse,
            query, key_cache, value_cache,
            block_tables, seq_lens, query_start_loc,
            alibi_slopes if alibi_slopes is not None else query,
            float(scale), float(logits_soft_cap or 1.0), num_seqs,
            cfg["min_query_len"], cfg["max_query_len"],
            *query.stride(),
            out.stride(0), out.stride(1),
            *key_cache.stride(), *value_cache.stride(),
            block_tables.stride(0),
            *part_strides,
            GROUP=group, HEAD_SIZE=head_size, HEAD_PAD=head_pad,
            BLOCK_SIZE=key_cache.shape[1], BLOCK_M=block_m, BLOCK_Q=block_q,
            BLOCK_N=cfg["block_n"], NUM_SPLITS=num_splits,
            SLIDING_WINDOW=int(sliding_window or 0),
            USE_ALIBI=alibi_slopes is not None,
            USE_SOFT_CAP=logits_soft_cap is not None,
            DOT_PRECISION="ieee" if query.dtype == torch.float32 else None,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
        if num_splits > 1:
            _merge_splits_kernel[(num_tokens,)](
                out, part_out, part_lse,
                num_heads,
                out.stride(0), out.stride(1),
                *part_strides,
                HEAD_SIZE=head_size, HEAD_PAD=head_pad,
                HEADS_PAD=triton.next_power_of_2(num_heads), NUM_SPLITS=num_splits,
                num_warps=4,
            )
    return out


ALL_QUERY_LENS = (0, 2**31 - 1)


def plan_launches(
    query: torch.Tensor, num_kv_heads: int, num_tokens: int, num_seqs: int,
    max_query_len: int, max_seq_len: int, min_query_len: int | None = None,
    overrides: dict | None = None,
) -> list[dict]:
    """The launches for one batch: tile sizes, warps, stages, KV splits, query-length range.

    A batch with decodes and longer chunks gets two launches (unless ``overrides`` sets
    ``mixed_launches`` False): small row tiles for queries that fit 16 rows, large ones for
    the rest. Other overrides (``block_m``, ``block_n``, ``num_splits``, ``num_warps``,
    ``num_stages``) apply to every launch.
    """
    overrides = dict(overrides or {})
    group = query.shape[1] // num_kv_heads
    decode_limit = max(1, 16 // group)  # query lengths whose rows fit a 16-row tile
    mixed = (min_query_len is not None and min_query_len <= decode_limit < max_query_len
             and overrides.get("num_splits", 1) == 1)
    mixed = overrides.pop("mixed_launches", mixed and not interpreted()) and mixed
    if not mixed:
        cfg = choose_config(query, num_kv_heads, num_tokens, num_seqs, max_query_len,
                            max_seq_len)
        cfg.update(overrides)
        return [{**cfg, "min_query_len": ALL_QUERY_LENS[0], "max_query_len": ALL_QUERY_LENS[1]}]
    decode = choose_config(query, num_kv_heads, num_tokens, num_seqs, decode_limit,
                           max_seq_len, allow_splits=False)
    prefill = choose_config(query, num_kv_heads, num_tokens, num_seqs, max_query_len,
                            max_seq_len)
    return [{**decode, **overrides, "min_query_len": 0, "max_query_len": decode_limit},
            {**prefill, **overrides, "min_query_len": decode_limit + 1,
             "max_query_len": ALL_QUERY_LENS[1]}]


def choose_config(
    query: torch.Tensor, num_kv_heads: int, num_tokens: int, num_seqs: int,
    max_query_len: int, max_seq_len: int, allow_splits: bool = True,
) -> dict:
    """Tile sizes, warps and the KV split count for one launch (tuned on an H200)."""
    head_size = query.shape[2]
    group = query.shape[1] // num_kv_heads
    if interpreted():
        # The interpreter pays per program and per op: few, large tiles.
        return {"block_m": 128, "block_n": 128, "num_splits": 1, "num_warps": 4,
                "num_stages": 1}
    big_head = head_size > 128
    if max_query_len * group <= 16:  # decodes: one 16-row tile holds every query head
        block_m = 16
        block_n = 32 if big_head else 64
        num_warps, num_stages = 4, 3
    else:
        block_m, block_n = 64, (32 if big_head else 64)
        num_warps, num_stages = 4, 2
    if query.dtype == torch.float32:  # twice the bytes per tile
        block_n = 32
        num_stages = 2
    block_m = max(block_m, triton.next_power_of_2(group))

    # Flash-decoding: split the KV range when the tiles alone cannot fill the GPU.
    num_splits = 1
    block_q = block_m // group
    programs = (num_tokens // block_q + num_seqs) * num_kv_heads
    if allow_splits and query.is_cuda and max_query_len <= block_q:
        target = 2 * multiprocessor_count(query.device.index or 0)
        if programs < target:
            by_len = max(1, max_seq_len // 256)  # keep >= 256 keys per split
            num_splits = int(min(16, by_len, triton.cdiv(target, programs)))
    return {"block_m": block_m, "block_n": block_n, "num_splits": num_splits,
            "num_warps": num_warps, "num_stages": num_stages}
