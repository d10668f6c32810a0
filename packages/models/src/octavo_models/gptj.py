"""GPT-J: one norm feeding parallel attention and MLP, interleaved (GPT-J style) partial
rotary over ``rotary_dim``, q/k/v and output projections without bias, an LM head with bias.
"""

from __future__ import annotations

from typing import Any

from octavo.layers import RopeConfig
from octavo_models.decoder import DecoderForCausalLM, DecoderSpec
from octavo_models.weight_map import WeightRule


class GPTJForCausalLM(DecoderForCausalLM):
    checkpoint_prefix = "transformer"

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        hidden, heads = config.n_embd, config.n_head
        head_size = hidden // heads
        rope = RopeConfig(theta=10000.0, rotary_dim=config.rotary_dim or head_size,
                          max_position_embeddings=config.n_positions, is_neox_style=False)
        return DecoderSpec(
            vocab_size=config.vocab_size, hidden_size=hidden, num_layers=config.n_layer,
            num_heads=heads, num_kv_heads=heads, intermediate_size=config.n_inner or 4 * hidden,
            activation=config.activation_function, norm_eps=config.layer_norm_epsilon,
            qkv_bias=False, o_bias=False, parallel_residual=True, shared_norm=True, rope=rope,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            lm_head_bias=True)

    def weight_rules(self) -> list[WeightRule]:
        h = "transformer.h.{i}"
        return [
            WeightRule("transformer.wte.weight", "embed_tokens.weight"),
            WeightRule(f"{h}.ln_1.{{p}}", "layers.{i}.attn_norm.{p}"),
            *(WeightRule(f"{h}.attn.{x}_proj.{{p}}", "layers.{i}.attn.qkv_proj.{p}",
                         shard=x) for x in "qkv"),
            WeightRule(f"{h}.attn.out_proj.{{p}}", "layers.{i}.attn.o_proj.{p}"),
            WeightRule(f"{h}.mlp.fc_in.{{p}}", "layers.{i}.mlp.up_proj.{p}"),
            WeightRule(f"{h}.mlp.fc_out.{{p}}", "layers.{i}.mlp.down_proj.{p}"),
            WeightRule("transformer.ln_f.{p}", "norm.{p}"),
            WeightRule("lm_head.weight",
                       None if self.spec.tie_word_embeddings else "lm_head.weight"),
            WeightRule("lm_head.bias", "lm_head_bias"),
            # buffers older checkpoints carry
            WeightRule(f"{h}.attn.bias", None),
            WeightRule(f"{h}.attn.masked_bias", None),
        ]
