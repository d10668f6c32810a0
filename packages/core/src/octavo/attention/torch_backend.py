"""The torch reference attention backend: the oracle for every other backend, and the CPU path."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

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
    # index_copy_ rather than an indexed assignment: 15x faster for a decode step's few rows
    # on the CPU, the same for thousands.
    key_cache.view(num_blocks * block_size, *key_cache.shape[2:]).index_copy_(
        0, slot_mapping, key.to(key_cache.dtype))
    value_cache.view(num_blocks * block_size, *value_cache.shape[2:]).index_copy_(
        0, slot_mapping, value.to(value_cache.dtype))


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


def _decode_slots(
    block_tables: torch.Tensor,  # [S, max_blocks]
    seq_lens: torch.Tensor,  # [S] int64
    block_size: int,
    width: int,
) -> torch.Tensor:  # [S * width] int64 slots
    """Slots of positions ``0 .. width-1`` of each sequence; positions past its end read
    position 0 instead (always written), so the gathered padding holds real, finite values."""
    pos = torch.arange(width, device=block_tables.device)[None, :]
    pos = torch.where(pos < seq_lens[:, None], pos, 0)
    blocks = block_tables.long().gather(1, pos // block_size)
    return (blocks * block_size + pos % block_size).reshape(-1)


def _decode_attention(
    query: torch.Tensor,  # [S, num_heads, head_size], one query per sequence
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slots: torch.Tensor,  # [S * width], from _decode_slots
    seq_lens: torch.Tensor,  # [S] int64
    scale: float,
    alibi_slopes, sliding_window, logits_soft_cap,
) -> torch.Tensor:
    """All single-token queries at once over their padded, gathered contexts."""
    num_seqs, num_heads, head_size = query.shape
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    flat_k = key_cache.view(-1, num_kv_heads, head_size)
    flat_v = value_cache.view(-1, num_kv_heads, head_size)
    k = flat_k.index_select(0, slots).view(num_seqs, -1, num_kv_heads, head_size).float()
    v = flat_v.index_select(0, slots).view(num_seqs, -1, num_kv_heads, head_size).float()
    k_pos = torch.arange(k.shape[1], device=query.device)
    q = query.float().view(num_seqs, num_kv_heads, group, head_size)
    if alibi_slopes is None and logits_soft_cap is None:
        allowed = k_pos[None, :] < seq_lens[:, None]  # [S, T]
        if sliding_window is not None:
            allowed &= k_pos[None, :] > (seq_lens[:, None] - 1 - sliding_window)
        out = torch.nn.functional.scaled_dot_product_attention(  # [S, KH, G, D]
            q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed[:, None, None, :],
            scale=scale)
    else:
        scores = torch.matmul(q, k.permute(0, 2, 3, 1)) * scale  # [S, KH, G, T]
        slopes = (alibi_slopes.float().view(1, num_kv_heads, group, 1)
                  if alibi_slopes is not None else None)
        scores = _bias_and_mask(scores, (seq_lens - 1).view(-1, 1, 1, 1), k_pos.view(1, 1, 1, -1),
                                seq_lens.view(-1, 1, 1, 1), slopes, sliding_window,
                                logits_soft_cap)
        out = torch.matmul(torch.softmax(scores, dim=-1), v.transpose(1, 2))
    return out.reshape(num_seqs, num_heads, head_size).to(query.dtype)


# A decode group pads its sequences' contexts to its longest; a new group starts when that
# padding would pass this share of the group's gathered slots. Gathering and attending over
# padding cost as much as over real context, so one group padded to the batch's longest context
# made mixed-length decode steps (the chat mix: 16-1536 tokens) about 3x slower than groups.
MAX_DECODE_PADDING = 0.25


def group_by_length(seq_lens: list[int], max_padding: float = MAX_DECODE_PADDING
                    ) -> list[list[int]]:
    """Indices of ``seq_lens`` in groups of similar length, shortest first; padding every
    member to its group's longest wastes at most ``max_padding`` of the group's slots."""
    groups: list[list[int]] = []
    total = 0
    for i in sorted(range(len(seq_lens)), key=seq_lens.__getitem__):
        if groups and total + seq_lens[i] >= (1 - max_padding) * seq_lens[i] * (len(groups[-1]) + 1):
            groups[-1].append(i)
            total += seq_lens[i]
        else:
            groups.append([i])
            total = seq_lens[i]
    return groups


@dataclass(frozen=True)
class DecodeGroup:
    """Decodes of similar context length, attended in one batched product."""

    rows: torch.Tensor  # [n] int64, their query rows in the packed batch
    seq_lens: torch.Tensor  # [n] int64
    slots: torch.Tensor  # [n * width] int64, from _decode_slots


@dataclass(frozen=True)
class DecodePlan:
    """The batch's decodes that run in groups (none when fewer than two), and the groups."""

    decodes: frozenset[int]
    groups: list[DecodeGroup]


def _build_decode_plan(metadata: AttentionMetadata, block_size: int) -> DecodePlan:
    """Groups the batch's decodes by context length: query rows, seq lens, gather slots."""
    starts = metadata.query_start_loc_cpu
    decodes = [i for i in range(metadata.num_seqs) if starts[i + 1] - starts[i] == 1]
    if len(decodes) < 2:
        return DecodePlan(frozenset(), [])
    device = metadata.seq_lens.device
    lens = [metadata.seq_lens_cpu[i] for i in decodes]
    groups = []
    for members in group_by_length(lens):
        seqs = [decodes[j] for j in members]
        index = torch.tensor(seqs, device=device)
        seq_lens = metadata.seq_lens[index].long()
        width = -(-max(lens[j] for j in members) // block_size) * block_size
        groups.append(DecodeGroup(
            rows=torch.tensor([starts[i] for i in seqs], device=device), seq_lens=seq_lens,
            slots=_decode_slots(metadata.block_tables[index], seq_lens, block_size, width)))
    return DecodePlan(frozenset(decodes), groups)


@functools.cache
def decode_plan_builder(block_size: int) -> Callable[[AttentionMetadata], DecodePlan]:
    """The :meth:`AttentionMetadata.derived` builder of the decode plan for ``block_size``
    (one function per block size, so the plan is built once per step)."""
    return functools.partial(_build_decode_plan, block_size=block_size)


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

    Single-token queries (decodes) run in batched products, one per group of similar context
    length; prefill chunks run one request at a time.
    """
    num_heads = query.shape[1]
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    starts = metadata.query_start_loc_cpu
    plan = metadata.derived(decode_plan_builder(key_cache.shape[1]))
    for g in plan.groups:
        out.index_copy_(0, g.rows, _decode_attention(
            query.index_select(0, g.rows), key_cache, value_cache, g.slots, g.seq_lens, scale,
            alibi_slopes, sliding_window, logits_soft_cap))
    batched = plan.decodes
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
