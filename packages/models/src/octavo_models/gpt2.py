"""GPT-2: learned positions, pre-norm sequential blocks, ``Conv1D`` weights stored ``[in, out]``.

HF config fields: ``n_embd``, ``n_layer``, ``n_head``, ``n_inner``, ``n_positions``,
``activation_function``, ``layer_norm_epsilon``, ``scale_attn_weights``,
``scale_attn_by_inverse_layer_idx``, ``tie_word_embeddings``.
"""

from __future__ import annotations

from typing import Any

from octavo_models.decoder import DecoderForCausalLM, DecoderLayout, DecoderSpec
from octavo_models.weight_map import conv1d_to_linear

GPT2_LAYOUT = DecoderLayout(
    embed="transformer.wte.weight", positions="transformer.wpe.weight",
    layer="transformer.h.{i}", attn_norm="ln_1", qkv="attn.c_attn", o="attn.c_proj",
    mlp_norm="ln_2", up="mlp.c_fc", down="mlp.c_proj", final_norm="transformer.ln_f",
    linear_transform=conv1d_to_linear,
    layer_buffers=("attn.bias", "attn.masked_bias"))  # causal masks of older checkpoints


def gpt2_config_shape(config: Any) -> dict[str, Any]:
    """The :class:`DecoderSpec` fields that GPT-2's config and those named after it (GPT-J)
    spell alike: ``n_embd``, ``n_layer``, ``n_head``, ``n_inner``, ``activation_function``,
    ``layer_norm_epsilon``."""
    hidden, heads = config.n_embd, config.n_head
    return dict(vocab_size=config.vocab_size, hidden_size=hidden, num_layers=config.n_layer,
                num_heads=heads, num_kv_heads=heads,
                intermediate_size=config.n_inner or 4 * hidden,
                activation=config.activation_function, norm_eps=config.layer_norm_epsilon)


class GPT2LMHeadModel(DecoderForCausalLM):
    checkpoint_prefix = "transformer"
    layout = GPT2_LAYOUT

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        return DecoderSpec(
            **gpt2_config_shape(config), max_positions=config.n_positions,
            attn_scale=None if config.scale_attn_weights else 1.0,
            scale_by_inverse_layer=bool(config.scale_attn_by_inverse_layer_idx),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)))
