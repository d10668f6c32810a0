"""GPT-J: one norm feeding parallel attention and MLP, interleaved (GPT-J style) partial
rotary over ``rotary_dim``, q/k/v and output projections without bias, an LM head with bias.
"""

from __future__ import annotations

from typing import Any

from octavo.layers import RopeConfig
from octavo_models.decoder import DecoderForCausalLM, DecoderLayout, DecoderSpec
from octavo_models.gpt2 import gpt2_config_shape

GPTJ_LAYOUT = DecoderLayout(
    embed="transformer.wte.weight", layer="transformer.h.{i}", attn_norm="ln_1",
    qkv=("attn.q_proj", "attn.k_proj", "attn.v_proj"), o="attn.out_proj",
    up="mlp.fc_in", down="mlp.fc_out", final_norm="transformer.ln_f",
    lm_head_bias="lm_head.bias",
    layer_buffers=("attn.bias", "attn.masked_bias"))  # buffers older checkpoints carry


class GPTJForCausalLM(DecoderForCausalLM):
    checkpoint_prefix = "transformer"
    layout = GPTJ_LAYOUT

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        head_size = config.n_embd // config.n_head
        rope = RopeConfig(theta=10000.0, rotary_dim=config.rotary_dim or head_size,
                          max_position_embeddings=config.n_positions, is_neox_style=False)
        return DecoderSpec(
            **gpt2_config_shape(config), qkv_bias=False, o_bias=False, parallel_residual=True,
            shared_norm=True, rope=rope,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            lm_head_bias=True)
