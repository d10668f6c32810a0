"""The Triton attention backend: ``reshape_and_cache`` then unified paged attention."""

from __future__ import annotations

from typing import ClassVar

import torch

from octavo.attention.base import AttentionBackend, AttentionMetadata
from octavo_triton.attention_kernels import paged_attention
from octavo_triton.cache_kernels import reshape_and_cache
from octavo_triton.launch import interpreter_requested, triton_unavailable_reason


def min_query_len(metadata: AttentionMetadata) -> int:
    """The shortest query of the batch, from the host copy (no device sync); a
    :meth:`AttentionMetadata.derived` builder, so it is computed once per step."""
    starts = metadata.query_start_loc_cpu
    return min((hi - lo for lo, hi in zip(starts, starts[1:])), default=0)


class TritonAttentionBackend(AttentionBackend):
    """PagedAttention in Triton for mixed prefill-chunk + decode batches.

    Runs on CUDA (priority 10, above torch). On CPU it runs only under Triton's interpreter
    (``TRITON_INTERPRET=1`` set before Triton is imported), and then with priority -10, so
    CPU users still get the torch backend unless they name this one.
    """

    name = "triton"
    supported_devices: ClassVar[tuple[str, ...]] = ("cuda", "cpu")
    max_head_size: ClassVar[int | None] = 256  # any size up to it: tiles are padded and masked
    priority: ClassVar[int] = -10 if interpreter_requested() else 10
    supports_alibi: ClassVar[bool] = True
    supports_sliding_window: ClassVar[bool] = True
    supports_logits_soft_cap: ClassVar[bool] = True

    @classmethod
    def unsupported_reason(cls, device: torch.device | str, dtype: torch.dtype,
                           head_size: int) -> str | None:
        return (super().unsupported_reason(device, dtype, head_size)
                or triton_unavailable_reason(device))

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.alibi_slopes is not None:
            self.alibi_slopes = self.alibi_slopes.float().contiguous()
        self.launch_config: dict = {}  # overrides for plan_launches (tests, tuning)

    def forward(self, query, key, value, key_cache, value_cache,
                metadata: AttentionMetadata) -> torch.Tensor:  # shapes: AttentionBackend.forward
        reshape_and_cache(key, value, key_cache, value_cache, metadata.slot_mapping)
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        alibi = self.alibi_slopes
        if alibi is not None and alibi.device != query.device:
            alibi = self.alibi_slopes = alibi.to(query.device)
        return paged_attention(
            out, query, key_cache, value_cache,
            metadata.block_tables, metadata.seq_lens, metadata.query_start_loc,
            num_tokens=metadata.num_tokens, max_query_len=metadata.max_query_len,
            max_seq_len=metadata.max_seq_len, scale=self.scale,
            min_query_len=metadata.derived(min_query_len),
            alibi_slopes=alibi, sliding_window=self.sliding_window,
            logits_soft_cap=self.logits_soft_cap, config=self.launch_config)
