"""GPT-2: learned positions, pre-norm sequential blocks, ``Conv1D`` weights stored ``[in, out]``.

HF config fields: ``n_embd``, ``n_layer``, ``n_head``, ``n_inner``, ``n_positions``,
``activation_function``, ``layer_norm_epsilon``, ``scale_attn_weights``,
``scale_attn_by_inverse_layer_idx``, ``tie_word_embeddings``.
"""

from __future__ import annotations

from typing import Any

from octavo_models.decoder import DecoderForCausalLM, DecoderSpec
from octavo_models.weight_map import WeightRule, conv1d_to_linear


class GPT2LMHeadModel(DecoderForCausalLM):
    checkpoint_prefix = "transformer"

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        hidden, heads = config.n_embd, config.n_head
        return DecoderSpec(
            vocab_size=config.vocab_size, hidden_size=hidden, num_layers=config.n_layer,
            num_heads=heads, num_kv_heads=heads,
            intermediate_size=config.n_inner or 4 * hidden,
            activation=config.activation_function, norm_eps=config.layer_norm_epsilon,
            max_positions=config.n_positions,
            attn_scale=None if config.scale_attn_weights else 1.0,
            scale_by_inverse_layer=bool(config.scale_attn_by_inverse_layer_idx),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)))

    def weight_rules(self) -> list[WeightRule]:
        h = "transformer.h.{i}"
        return [
            WeightRule("transformer.wte.weight", "embed_tokens.weight"),
            WeightRule("transformer.wpe.weight", "embed_positions.weight"),
            WeightRule(f"{h}.ln_1.{{p}}", "layers.{i}.attn_norm.{p}"),
            WeightRule(f"{h}.attn.c_attn.{{p}}", "layers.{i}.attn.qkv_proj.{p}",
                       transform=conv1d_to_linear),
            WeightRule(f"{h}.attn.c_proj.{{p}}", "layers.{i}.attn.o_proj.{p}",
                       transform=conv1d_to_linear),
            WeightRule(f"{h}.ln_2.{{p}}", "layers.{i}.mlp_norm.{p}"),
            WeightRule(f"{h}.mlp.c_fc.{{p}}", "layers.{i}.mlp.up_proj.{p}",
                       transform=conv1d_to_linear),
            WeightRule(f"{h}.mlp.c_proj.{{p}}", "layers.{i}.mlp.down_proj.{p}",
                       transform=conv1d_to_linear),
            WeightRule("transformer.ln_f.{p}", "norm.{p}"),
            WeightRule("lm_head.weight",
                       None if self.spec.tie_word_embeddings else "lm_head.weight"),
            # causal-mask buffers that older checkpoints carry
            WeightRule(f"{h}.attn.bias", None),
            WeightRule(f"{h}.attn.masked_bias", None),
        ]
