"""The attention block every family shares: fused QKV projection, paged attention, output
projection.

Its parameters are ``qkv_proj.*`` (one fused ``[q | k | v]``) and ``o_proj.*``: the names the
families' weight rules target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from octavo.attention.base import AttentionMetadata
from octavo.layers import Attention, QKVParallelLinear, RowParallelLinear
from octavo.modeling import ModelContext


class AttentionBlock(nn.Module):
    """``o_proj(attention(clip(qkv_proj(x))))`` with rotary (when given ``cos_sin``) or ALiBi.

    Args:
        num_heads: query heads of the whole model (this rank gets its share).
        num_kv_heads: key/value heads of the whole model.
        scale: the softmax scale (None: ``head_dim ** -0.5``).
        sliding_window: attend to at most this many latest positions (None: all).
        alibi_slopes: one ALiBi slope per head of the whole model (None: no ALiBi); this rank
            keeps its heads' slopes.
        qkv_clip: clamp the fused q/k/v to ``[-qkv_clip, qkv_clip]`` (MPT's ``clip_qkv``).
        is_neox_style: rotary on the two halves of each head (HF Llama) rather than on
            even/odd pairs (GPT-J).
    """

    def __init__(
        self,
        ctx: ModelContext,
        prefix: str,
        *,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        qkv_bias: bool,
        o_bias: bool,
        scale: float | None = None,
        sliding_window: int | None = None,
        alibi_slopes: Sequence[float] | torch.Tensor | None = None,
        qkv_clip: float | None = None,
        is_neox_style: bool = True,
    ) -> None:
        super().__init__()
        common = dict(parallel=ctx.parallel, quant_method=ctx.quantization, dtype=ctx.dtype,
                      device=ctx.device)
        self.head_dim = head_dim
        self.qkv_proj = QKVParallelLinear(hidden_size, head_dim, num_heads, num_kv_heads,
                                          bias=qkv_bias, prefix=f"{prefix}.qkv_proj", **common)
        self.o_proj = RowParallelLinear(num_heads * head_dim, hidden_size, bias=o_bias,
                                        prefix=f"{prefix}.o_proj", **common)
        self.num_heads = self.qkv_proj.num_heads  # on this rank
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.qkv_clip = qkv_clip
        self.is_neox_style = is_neox_style
        slopes = None
        if alibi_slopes is not None:  # this rank's heads' slopes
            first = ctx.parallel.rank * self.num_heads
            slopes = torch.as_tensor(alibi_slopes, dtype=torch.float32)
            slopes = slopes[first:first + self.num_heads].to(ctx.device)
        self.attn = Attention(self.num_heads, head_dim, self.num_kv_heads,
                              head_dim ** -0.5 if scale is None else scale,
                              ctx.attention_backend, sliding_window=sliding_window,
                              alibi_slopes=slopes)

    def forward(
        self,
        hidden: torch.Tensor,  # [T, hidden]
        cos_sin: tuple[torch.Tensor, torch.Tensor] | None,  # each [T, rotary_dim / 2]
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        qkv = self.qkv_proj(hidden)  # [T, (H + 2 * KH) * D]
        if self.qkv_clip is not None:
            qkv = qkv.clamp(-self.qkv_clip, self.qkv_clip)
        out = self.attn.forward_qkv(qkv, cos_sin, kv_cache, metadata,
                                    is_neox_style=self.is_neox_style)  # [T, H * D]
        return self.o_proj(out)
