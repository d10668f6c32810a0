"""An attention backend built on ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from octavo.attention.base import AttentionBackend, AttentionMetadata
from octavo.attention.torch_backend import gather_kv, write_kv_cache


class SDPAAttentionBackend(AttentionBackend):
    """Per-request SDPA over the paged cache (float32, CPU; no ALiBi, no soft-capping)."""

    name = "example-sdpa"
    supported_devices = ("cpu",)
    supported_dtypes = (torch.float32,)
    priority = -10  # never picked over core's backends unless asked for by name

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.alibi_slopes is not None or self.logits_soft_cap is not None:
            raise ValueError("example-sdpa supports neither ALiBi nor logits soft-capping")

    def forward(self, query, key, value, key_cache, value_cache, metadata: AttentionMetadata):
        # query: [num_tokens, num_heads, head_size]; key/value: [num_tokens, num_kv_heads, head_size]
        write_kv_cache(key, value, key_cache, value_cache, metadata.slot_mapping)
        out = torch.empty_like(query)
        starts = metadata.query_start_loc_cpu
        for i, seq_len in enumerate(metadata.seq_lens_cpu):
            lo, hi = starts[i], starts[i + 1]
            if hi == lo:
                continue
            k = gather_kv(key_cache, metadata.block_tables[i], seq_len)  # [seq_len, KH, D]
            v = gather_kv(value_cache, metadata.block_tables[i], seq_len)
            q_pos = torch.arange(seq_len - (hi - lo), seq_len)[:, None]  # [q, 1]
            k_pos = torch.arange(seq_len)[None, :]  # [1, seq_len]
            allowed = k_pos <= q_pos
            if self.sliding_window is not None:
                allowed &= k_pos > q_pos - self.sliding_window
            attn = F.scaled_dot_product_attention(
                query[lo:hi].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                attn_mask=allowed, scale=self.scale, enable_gqa=True)  # [H, q, D]
            out[lo:hi] = attn.transpose(0, 1)
        return out
