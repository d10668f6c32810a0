"""Python entry points of the CUDA kernels (thin wrappers over ``torch.ops.octavo_cuda``)."""

from __future__ import annotations

import torch

from octavo.attention.base import AttentionMetadata
from octavo_cuda.build import load_ops


def reshape_and_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; negative slots are skipped
) -> None:
    """Write each token's K/V into its cache slot, in place."""
    load_ops().reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_size]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
    value_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,  # [num_heads] float32, on the query's device
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    partition_size: int = 0,
    tensor_cores: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
    """Causal paged attention of a packed batch over the cache (K/V already written).

    ``partition_size``: 0 lets the kernel decide when to split long contexts over several
    thread blocks; > 0 forces KV partitions of about that many tokens; < 0 never splits.
    ``tensor_cores``: fp16/bf16 requests of 16+ new tokens use the tensor-core kernel (on
    compute capability 8.0+). Rows past ``metadata.num_tokens`` (graph padding) are left
    unwritten.
    """
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    load_ops().paged_attention(
        out, query, key_cache, value_cache, metadata.block_tables, metadata.seq_lens,
        metadata.query_start_loc, metadata.max_query_len, metadata.max_seq_len, float(scale),
        alibi_slopes, int(sliding_window or 0), float(logits_soft_cap or 0.0),
        int(partition_size), bool(tensor_cores))
    return out


def attention_plan(
    num_tokens: int, num_seqs: int, num_heads: int, num_kv_heads: int, max_query_len: int,
    max_seq_len: int, partition_size: int = 0, num_sms: int | None = None,
    tensor_cores: bool = True,
) -> dict[str, int]:
    """How the kernels would cut a call into thread blocks (for tests and benchmarks)."""
    if num_sms is None:
        device = torch.cuda.current_device()
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    values = load_ops().attention_plan(num_tokens, num_seqs, num_heads, num_kv_heads,
                                       max_query_len, max_seq_len, partition_size, num_sms,
                                       tensor_cores)
    return dict(zip(PLAN_KEYS, values))


PLAN_KEYS = ("heads_per_block", "queries_per_block", "head_chunks", "num_q_tiles", "num_splits",
             "partition_size", "tc", "tc_heads_per_block", "tc_queries_per_block",
             "tc_head_chunks", "tc_q_tiles")
