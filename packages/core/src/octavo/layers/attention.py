"""One layer's paged attention: owns a backend instance and reshapes to and from heads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from octavo.attention.base import AttentionBackend, AttentionMetadata


class Attention(nn.Module):
    """Writes this step's K/V into the layer's cache and attends over it.

    Args:
        backend: the attention backend class (``ModelContext.attention_backend``); one instance
            is built per layer.
        sliding_window: attend to at most this many latest positions (None: all).
    """

    def __init__(self, num_heads: int, head_size: int, num_kv_heads: int, scale: float,
                 backend: type[AttentionBackend], *, sliding_window: int | None = None,
                 alibi_slopes: torch.Tensor | None = None,
                 logits_soft_cap: float | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads
        self.sliding_window = sliding_window
        extra = {}
        if alibi_slopes is not None:
            extra["alibi_slopes"] = alibi_slopes
        if logits_soft_cap is not None:
            extra["logits_soft_cap"] = logits_soft_cap
        self.impl: AttentionBackend = backend(num_heads, head_size, num_kv_heads, scale,
                                              sliding_window=sliding_window, **extra)
        self._rotary_dtype: torch.dtype | None = None  # the dtype _rotary was chosen for

    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_size]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, num_heads * head_size]
        key_cache, value_cache = kv_cache
        out = self.impl.forward(query, key, value, key_cache, value_cache, metadata)
        return out.reshape(out.shape[0], self.num_heads * self.head_size)

    def forward_qkv(
        self,
        qkv: torch.Tensor,  # [num_tokens, (num_heads + 2 * num_kv_heads) * head_size]
        cos_sin: tuple[torch.Tensor, torch.Tensor] | None,  # each [T, rotary_dim / 2]
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        metadata: AttentionMetadata,
        *,
        is_neox_style: bool = True,
    ) -> torch.Tensor:  # [num_tokens, num_heads * head_size]
        """Attend from a fused ``[q | k | v]`` projection; rotary (if ``cos_sin``) on q and k."""
        num_tokens = qkv.shape[0]
        heads, kv_heads, d = self.num_heads, self.num_kv_heads, self.head_size
        qk = qkv[:, : (heads + kv_heads) * d].view(num_tokens, heads + kv_heads, d)
        if cos_sin is not None:  # q and k rotate together: one rotary over H + KH heads
            if qk.dtype is not self._rotary_dtype:
                self._choose_rotary(qk)
            qk = self._rotary(qk, *cos_sin, is_neox_style)
        v = qkv[:, (heads + kv_heads) * d:].view(num_tokens, kv_heads, d)  # [T, KH, D]
        return self.forward(qk[:, :heads], qk[:, heads:], v, kv_cache, metadata)

    def _choose_rotary(self, x: torch.Tensor) -> None:
        """:func:`~octavo.layers.rotary.apply_rotary`'s choice (a registered faster op for
        ``x``'s device and dtype, else the torch code), made at the first forward in a dtype
        and kept, as ``RMSNorm`` does: a lookup per call cost 1.8% of a one-stream step."""
        from octavo.layers.layer_ops import find_layer_op
        from octavo.layers.rotary import apply_rotary_torch

        self._rotary = find_layer_op("rotary", x) or apply_rotary_torch
        self._rotary_dtype = x.dtype

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, "
                f"head_size={self.head_size}, backend={self.impl.name}, "
                f"sliding_window={self.sliding_window}")
