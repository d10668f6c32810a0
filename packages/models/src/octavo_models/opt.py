"""OPT: learned positions offset by 2, separate q/k/v with bias, ReLU MLP (``fc1``/``fc2``).

``do_layer_norm_before=False`` (OPT-350m) is the post-norm layout without a final norm;
``word_embed_proj_dim != hidden_size`` adds ``project_in``/``project_out`` around the decoder.
"""

from __future__ import annotations

from typing import Any

from octavo_models.decoder import DecoderForCausalLM, DecoderLayout, DecoderSpec
from octavo_models.weight_map import WeightRule

POSITION_OFFSET = 2  # OPT's learned position table starts at row 2

OPT_LAYOUT = DecoderLayout(
    embed="model.decoder.embed_tokens.weight", positions="model.decoder.embed_positions.weight",
    layer="model.decoder.layers.{i}", attn_norm="self_attn_layer_norm",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), o="self_attn.out_proj",
    mlp_norm="final_layer_norm", up="fc1", down="fc2",
    final_norm="model.decoder.final_layer_norm",
    extra=tuple(WeightRule(f"model.decoder.{name}.{{p}}", f"{name}.{{p}}")
                for name in ("project_in", "project_out")))


class OPTForCausalLM(DecoderForCausalLM):
    checkpoint_prefix = "model"
    layout = OPT_LAYOUT

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        if not getattr(config, "layer_norm_elementwise_affine", True):
            raise ValueError("OPT with layer_norm_elementwise_affine=False is not supported")
        pre_norm = bool(config.do_layer_norm_before)
        if pre_norm and getattr(config, "_remove_final_layer_norm", False):
            raise ValueError("OPT with _remove_final_layer_norm=True is not supported")
        heads = config.num_attention_heads
        bias = bool(getattr(config, "enable_bias", True))
        return DecoderSpec(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers, num_heads=heads, num_kv_heads=heads,
            intermediate_size=config.ffn_dim, activation=config.activation_function,
            norm_eps=1e-5, qkv_bias=bias, o_bias=bias, mlp_bias=bias, norm_first=pre_norm,
            max_positions=config.max_position_embeddings, position_offset=POSITION_OFFSET,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
            embed_dim=config.word_embed_proj_dim)
