"""Falcon: rotary, fused ``query_key_value`` in one of three layouts, parallel attention + MLP.

- ``new_decoder_architecture`` (Falcon 40B/180B, Falcon 2): ``num_kv_heads`` groups, each
  ``[q heads of the group, k, v]``; attention and MLP in parallel, reading ``ln_attn`` and
  ``ln_mlp`` (or one shared ``input_layernorm`` when ``num_ln_in_parallel_attn == 1``).
- ``multi_query`` (Falcon 7B): ``[all q heads, one k, one v]``; parallel with one norm.
- otherwise: per-head ``[q, k, v]``, ``num_attention_heads`` KV heads; ``parallel_attn``
  chooses parallel (one norm) or sequential blocks.

``alibi=True`` checkpoints (Falcon-RW) are refused: there is no reference to match. HF computes
their ALiBi bias in bfloat16, and its eager attention adds the bias twice (once in the mask,
once to the scores) where its SDPA path adds it once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from octavo.layers import rope_config_from_hf
from octavo_models.decoder import DecoderForCausalLM, DecoderLayout, DecoderSpec
from octavo_models.weight_map import grouped_qkv_to_merged

FALCON_LAYOUT = DecoderLayout(
    embed="transformer.word_embeddings.weight", layer="transformer.h.{i}",
    attn_norm="input_layernorm", qkv="self_attention.query_key_value",
    o="self_attention.dense", mlp_norm="post_attention_layernorm", up="mlp.dense_h_to_4h",
    down="mlp.dense_4h_to_h", final_norm="transformer.ln_f")


def _num_kv_heads(config: Any) -> int:
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _num_layer_norms(config: Any) -> int:
    """How many norms a block has (2: attention and MLP each read their own)."""
    if config.new_decoder_architecture:
        return config.num_ln_in_parallel_attn or 2
    return 1 if config.parallel_attn else 2


class FalconForCausalLM(DecoderForCausalLM):
    checkpoint_prefix = "transformer"
    layout = FALCON_LAYOUT

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        if config.alibi:
            raise ValueError("Falcon with alibi=True is not supported (HF rounds its ALiBi "
                             "bias to bfloat16)")
        heads = config.num_attention_heads
        parallel = bool(config.new_decoder_architecture or config.parallel_attn)
        return DecoderSpec(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers, num_heads=heads,
            num_kv_heads=_num_kv_heads(config),
            intermediate_size=config.ffn_hidden_size or 4 * config.hidden_size,
            activation=config.activation, norm_eps=config.layer_norm_epsilon,
            qkv_bias=config.bias, o_bias=config.bias, mlp_bias=config.bias,
            parallel_residual=parallel, shared_norm=_num_layer_norms(config) == 1,
            rope=rope_config_from_hf(config, config.hidden_size // heads),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)))

    def checkpoint_layout(self) -> DecoderLayout:
        """:data:`FALCON_LAYOUT`, with ``ln_attn`` / ``ln_mlp`` where the new architecture has
        two norms, and the grouped or per-head ``query_key_value`` reordered to ``[q | k | v]``
        (multi-query's is already that)."""
        spec, config = self.spec, self.config
        layout = self.layout
        if config.new_decoder_architecture and _num_layer_norms(config) == 2:
            layout = replace(layout, attn_norm="ln_attn", mlp_norm="ln_mlp")
        if config.multi_query and not config.new_decoder_architecture:
            return layout
        return replace(layout, qkv_transform=grouped_qkv_to_merged(
            spec.num_heads, spec.num_kv_heads, spec.head_dim))
