"""The example plugin's model verified by Octavo's model conformance suite.

This is how a third-party model plugin tests itself: subclass ``ModelConformanceSuite``. The
architecture has no transformers implementation, so the reference is a plain full-sequence
PyTorch model with the same weights, and the engine-level check (which saves the reference with
``save_pretrained``) is off.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig

from octavo.testing.model_suite import ModelConformanceSuite


class ReferenceExampleModel(nn.Module):
    """``embed -> h + o_proj(causal_attention(qkv_proj(h))) -> lm_head`` over whole sequences."""

    def __init__(self, config) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_size = config.hidden_size // self.heads
        hidden = config.hidden_size
        q, kv = self.heads * self.head_size, self.kv_heads * self.head_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
        self.qkv_proj = nn.Linear(hidden, q + 2 * kv, bias=False)
        self.o_proj = nn.Linear(q, hidden, bias=False)
        self.lm_head = nn.Linear(hidden, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:  # input_ids: [1, T]
        h = self.embed_tokens(input_ids[0])  # [T, hidden]
        d = self.head_size
        q, k, v = self.qkv_proj(h).split([self.heads * d, self.kv_heads * d,
                                          self.kv_heads * d], dim=-1)
        heads = [x.view(len(h), -1, d).transpose(0, 1) for x in (q, k, v)]  # [heads, T, D]
        attn = F.scaled_dot_product_attention(*heads, is_causal=True, enable_gqa=True)
        h = h + self.o_proj(attn.transpose(0, 1).reshape(len(h), -1))
        return SimpleNamespace(logits=self.lm_head(h)[None])  # [1, T, vocab]


class TestExampleModel(ModelConformanceSuite):
    engine_check = False  # the reference is not a transformers model

    def hf_config(self):
        return LlamaConfig(vocab_size=96, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=2, num_hidden_layers=1,
                           architectures=["OctavoExampleForCausalLM"])

    def build_hf_model(self, config):
        torch.manual_seed(self.seed)
        model = ReferenceExampleModel(config)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * self.weight_noise)
        return model.eval()
