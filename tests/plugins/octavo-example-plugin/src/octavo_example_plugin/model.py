"""The smallest model that uses the paged KV cache: embedding, one attention layer, LM head.

It has no position encoding and no MLP; it exists to show a third-party model family.
HF config fields used: ``vocab_size``, ``hidden_size``, ``num_attention_heads`` and
``num_key_value_heads``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from octavo.modeling import CausalLM, KVCacheSpec, ModelContext


class ExampleForCausalLM(CausalLM):
    """``h = embed(ids); h = h + o_proj(attn(qkv_proj(h))); logits = lm_head(h)``."""

    def __init__(self, config: Any, ctx: ModelContext) -> None:
        super().__init__(config, ctx)
        spec = self.kv_cache_spec(config)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = spec.num_kv_heads
        self.head_size = spec.head_size
        hidden = config.hidden_size
        q_size = self.num_heads * self.head_size
        kv_size = self.num_kv_heads * self.head_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
        self.qkv_proj = nn.Linear(hidden, q_size + 2 * kv_size, bias=False)
        self.o_proj = nn.Linear(q_size, hidden, bias=False)
        self.lm_head = nn.Linear(hidden, config.vocab_size, bias=False)
        self.attn = ctx.attention_backend(self.num_heads, self.head_size, self.num_kv_heads,
                                          self.head_size ** -0.5)
        self.to(dtype=ctx.dtype, device=ctx.device)
        self.requires_grad_(False)

    @classmethod
    def kv_cache_spec(cls, config: Any) -> KVCacheSpec:
        num_heads = config.num_attention_heads
        return KVCacheSpec(num_layers=1,
                           num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
                           head_size=config.hidden_size // num_heads)

    def forward(self, input_ids, positions, kv_caches, metadata):
        hidden = self.embed_tokens(input_ids)  # [num_tokens, hidden]
        q_size = self.num_heads * self.head_size
        kv_size = self.num_kv_heads * self.head_size
        q, k, v = self.qkv_proj(hidden).split([q_size, kv_size, kv_size], dim=-1)
        key_cache, value_cache = kv_caches[0]
        attn = self.attn.forward(
            q.view(-1, self.num_heads, self.head_size),  # [num_tokens, num_heads, head_size]
            k.view(-1, self.num_kv_heads, self.head_size),
            v.view(-1, self.num_kv_heads, self.head_size),
            key_cache, value_cache, metadata)
        return hidden + self.o_proj(attn.reshape(-1, q_size))  # [num_tokens, hidden]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()  # [n, vocab_size]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"unexpected weight {name!r} for {type(self).__name__}")
            params[name].copy_(tensor)
            loaded.add(name)
        return loaded
