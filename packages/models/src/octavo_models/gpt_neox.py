"""GPT-NeoX / Pythia: partial rotary (NeoX style), per-head interleaved ``query_key_value``,
parallel residual with two norms (or sequential when ``use_parallel_residual`` is False).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from octavo.layers import rope_config_from_hf
from octavo_models.decoder import DecoderForCausalLM, DecoderLayout, DecoderSpec
from octavo_models.weight_map import grouped_qkv_to_merged

GPT_NEOX_LAYOUT = DecoderLayout(
    embed="gpt_neox.embed_in.weight", layer="gpt_neox.layers.{i}",
    attn_norm="input_layernorm", qkv="attention.query_key_value", o="attention.dense",
    mlp_norm="post_attention_layernorm", up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h",
    final_norm="gpt_neox.final_layer_norm",
    lm_head=("embed_out.weight", "lm_head.weight"),  # transformers 4 / 5
    # buffers older checkpoints carry
    layer_buffers=("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq"))


class GPTNeoXForCausalLM(DecoderForCausalLM):
    checkpoint_prefix = "gpt_neox"
    layout = GPT_NEOX_LAYOUT

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        heads = config.num_attention_heads
        head_size = config.hidden_size // heads
        rope = rope_config_from_hf(config, head_size)  # transformers maps rotary_pct here
        bias = bool(getattr(config, "attention_bias", True))
        return DecoderSpec(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers, num_heads=heads, num_kv_heads=heads,
            intermediate_size=config.intermediate_size, activation=config.hidden_act,
            norm_eps=config.layer_norm_eps, qkv_bias=bias, o_bias=bias,
            parallel_residual=bool(config.use_parallel_residual), rope=rope,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)))

    def checkpoint_layout(self) -> DecoderLayout:
        """:data:`GPT_NEOX_LAYOUT`, its per-head ``[q, k, v]`` reordered to ``[q | k | v]``."""
        spec = self.spec
        return replace(self.layout, qkv_transform=grouped_qkv_to_merged(
            spec.num_heads, spec.num_kv_heads, spec.head_dim))
