"""The attention backend interface and the metadata of one packed batch.

KV cache layout, shared by every backend (per layer)::

    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size]

A token at position ``pos`` of request ``r`` lives in slot
``block_tables[r, pos // block_size] * block_size + pos % block_size``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class AttentionMetadata:
    """Describes one packed batch of ``num_tokens`` tokens from ``num_seqs`` requests.

    Request ``i`` owns query tokens ``query_start_loc[i]:query_start_loc[i + 1]``, which are
    its positions ``seq_lens[i] - query_len_i .. seq_lens[i] - 1`` (its newest tokens).
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64, where each new K/V is written
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [num_seqs] int32, context length incl. the new tokens
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    max_query_len: int
    max_seq_len: int
    query_start_loc_cpu: list[int]  # host copies, so backends need not synchronize
    seq_lens_cpu: list[int]
    # Scratch shared by every layer of one step: backends keep tensors derived from this
    # metadata here (index tensors, launch plans) instead of rebuilding them per layer.
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc_cpu[-1]

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


class AttentionBackend(ABC):
    """Paged attention for one layer: writes the new K/V into the cache, then attends.

    Subclasses declare what they support; the engine picks the supported backend with the
    highest ``priority`` unless the user names one.
    """

    name: ClassVar[str]
    supported_devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (
        torch.float32, torch.float16, torch.bfloat16)
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = None  # None: any
    priority: ClassVar[int] = 0
    # Optional features; a backend that sets one to False is refused a layer that needs it.
    supports_alibi: ClassVar[bool] = True
    supports_sliding_window: ClassVar[bool] = True
    supports_logits_soft_cap: ClassVar[bool] = True

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        num_kv_heads: int,
        scale: float,
        *,
        alibi_slopes: torch.Tensor | None = None,  # [num_heads] float32
        sliding_window: int | None = None,  # attend to at most this many latest positions
        logits_soft_cap: float | None = None,
    ) -> None:
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        for feature, value in (("alibi", alibi_slopes), ("sliding_window", sliding_window),
                               ("logits_soft_cap", logits_soft_cap)):
            if value is not None and not getattr(self, f"supports_{feature}"):
                raise ValueError(f"attention backend {self.name!r} does not support {feature}")
        if alibi_slopes is not None and alibi_slopes.numel() != num_heads:
            raise ValueError(f"alibi_slopes has {alibi_slopes.numel()} entries, "
                             f"expected num_heads={num_heads}")
        if sliding_window is not None and sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive, got {sliding_window}")
        if logits_soft_cap is not None and logits_soft_cap <= 0:
            raise ValueError(f"logits_soft_cap must be positive, got {logits_soft_cap}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.alibi_slopes = alibi_slopes
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap

    @classmethod
    def supports(cls, device: torch.device | str, dtype: torch.dtype, head_size: int) -> bool:
        return cls.unsupported_reason(device, dtype, head_size) is None

    @classmethod
    def unsupported_reason(cls, device: torch.device | str, dtype: torch.dtype,
                           head_size: int) -> str | None:
        """Why this backend cannot run here (logged when the engine falls back), else None."""
        device_type = torch.device(device).type
        if device_type not in cls.supported_devices:
            return f"device {device_type!r} is not one of {', '.join(cls.supported_devices)}"
        if dtype not in cls.supported_dtypes:
            return f"dtype {dtype} is not supported"
        if cls.supported_head_sizes is not None and head_size not in cls.supported_head_sizes:
            return f"head size {head_size} is not one of {cls.supported_head_sizes}"
        return None

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_size]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
        value_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
        """Write ``key``/``value`` at ``metadata.slot_mapping``, then attend causally."""
