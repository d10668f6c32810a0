"""The torch reference attention backend: the oracle for every other backend, and the CPU path."""

from __future__ import annotations

import torch

from octavo.attention.base import AttentionBackend, AttentionMetadata


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    value: torch.Tensor,
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; negative slots are skipped
) -> None:
    """Scatter new K/V into the paged cache."""
    num_blocks, block_size = key_cache.shape[:2]
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        key, value, slot_mapping = key[valid], value[valid], slot_mapping[valid]
    key_cache.view(num_blocks * block_size, *key_cache.shape[2:])[slot_mapping] = key
    value_cache.view(num_blocks * block_size, *value_cache.shape[2:])[slot_mapping] = value


def gather_kv(
    cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    block_table: torch.Tensor,  # [max_blocks] int32
    seq_len: int,
) -> torch.Tensor:  # [seq_len, num_kv_heads, head_size]
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    blocks = cache[block_table[:num_blocks].long()]
    return blocks.reshape(num_blocks * block_size, *cache.shape[2:])[:seq_len]


def _bias_and_mask(
    scores: torch.Tensor,  # [..., q, s]
    q_pos: torch.Tensor,  # broadcastable to [..., q, 1]
    k_pos: torch.Tensor,  # broadcastable to [..., 1, s]
    seq_len: torch.Tensor | int,
    alibi_slopes: torch.Tensor | None,  # broadcastable to the head dims of scores
    sliding_window: int | None,
    logits_soft_cap: float | None,
) -> torch.Tensor:
    if logits_soft_cap is not None:
        scores = logits_soft_cap * torch.tanh(scores / logits_soft_cap)
    if alibi_slopes is not None:
        scores = scores + alibi_slopes * (k_pos - q_pos)
    mask = (k_pos > q_pos) | (k_pos >= seq_len)
    if sliding_window is not None:
        mask = mask | (k_pos <= q_pos - sliding_window)
    return scores.masked_fill(mask, float("-inf"))


def _decode_attention(
    query: torch.Tensor,  # [S, num_heads, head_size], one query per sequence
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [S, max_blocks]
    seq_lens: torch.Tensor,  # [S]
    max_seq_len: int,
    scale: float,
    alibi_slopes, sliding_window, logits_soft_cap,
) -> torch.Tensor:
    """All single-token queries at once over their padded, gathered contexts."""
    num_seqs, num_heads, head_size = query.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    num_blocks = -(-max_seq_len // block_size)
    table = block_tables[:, :num_blocks].long()
    k = key_cache[table].flatten(1, 2).float()  # [S, T, KH, D], a gathered copy
    v = value_cache[table].flatten(1, 2).float()
    q = query.float().view(num_seqs, num_kv_heads, group, head_size)
    scores = torch.matmul(q, k.permute(0, 2, 3, 1)) * scale  # [S, KH, G, T]
    k_pos = torch.arange(k.shape[1], device=query.device).view(1, 1, 1, -1)
    q_pos = (seq_lens.long() - 1).view(-1, 1, 1, 1)
    slopes = None if alibi_slopes is None else alibi_slopes.float().view(1, num_kv_heads, group, 1)
    scores = _bias_and_mask(scores, q_pos, k_pos, seq_lens.long().view(-1, 1, 1, 1), slopes,
                            sliding_window, logits_soft_cap)
    probs = torch.softmax(scores, dim=-1)
    padding = k_pos.view(1, -1, 1, 1) >= seq_lens.long().view(-1, 1, 1, 1)
    v.masked_fill_(padding, 0.0)  # slots past a sequence's end may hold anything, even NaN
    out = torch.matmul(probs, v.transpose(1, 2))  # [S, KH, G, D]
    return out.reshape(num_seqs, num_heads, head_size).to(query.dtype)


def paged_attention_reference(
    query: torch.Tensor,  # [num_tokens, num_heads, head_size]
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
    alibi_slopes: torch.Tensor | None = None,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
    """Causal attention of each request's queries over its cached context, in float32.

    Single-token queries (decodes) run together in one batched product; prefill chunks run
    one request at a time.
    """
    num_heads = query.shape[1]
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    starts = metadata.query_start_loc_cpu
    query_lens = [hi - lo for lo, hi in zip(starts, starts[1:])]
    decodes = [i for i, n in enumerate(query_lens) if n == 1]
    if len(decodes) > 1:
        rows = torch.tensor([starts[i] for i in decodes], device=query.device)
        index = torch.tensor(decodes, device=query.device)
        out[rows] = _decode_attention(
            query[rows], key_cache, value_cache, metadata.block_tables[index],
            metadata.seq_lens[index], max(metadata.seq_lens_cpu[i] for i in decodes), scale,
            alibi_slopes, sliding_window, logits_soft_cap)
    batched = set(decodes) if len(decodes) > 1 else set()
    for i, seq_len in enumerate(metadata.seq_lens_cpu):
        q_lo, q_hi = starts[i], starts[i + 1]
        query_len = q_hi - q_lo
        if query_len == 0 or i in batched:
            continue
        q = query[q_lo:q_hi].float().transpose(0, 1)  # [H, q, D]
        k = gather_kv(key_cache, metadata.block_tables[i], seq_len).float()  # [s, KH, D]
        v = gather_kv(value_cache, metadata.block_tables[i], seq_len).float()
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        scores = torch.matmul(q, k.permute(1, 2, 0)) * scale  # [H, q, s]
        q_pos = torch.arange(seq_len - query_len, seq_len, device=query.device)[:, None]
        k_pos = torch.arange(seq_len, device=query.device)[None, :]
        slopes = None if alibi_slopes is None else alibi_slopes.float()[:, None, None]
        scores = _bias_and_mask(scores, q_pos, k_pos, seq_len, slopes, sliding_window,
                                logits_soft_cap)
        probs = torch.softmax(scores, dim=-1)
        out[q_lo:q_hi] = torch.matmul(probs, v.transpose(0, 1)).transpose(0, 1).to(out.dtype)
    return out


class TorchAttentionBackend(AttentionBackend):
    """Plain torch ops over the paged cache; runs anywhere torch runs."""

    name = "torch"
    priority = 0

    def forward(self, query, key, value, key_cache, value_cache, metadata: AttentionMetadata):
        write_kv_cache(key, value, key_cache, value_cache, metadata.slot_mapping)
        return paged_attention_reference(
            query, key_cache, value_cache, metadata, self.scale,
            alibi_slopes=self.alibi_slopes, sliding_window=self.sliding_window,
            logits_soft_cap=self.logits_soft_cap)
