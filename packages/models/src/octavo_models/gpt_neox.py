"""GPT-NeoX / Pythia: partial rotary (NeoX style), per-head interleaved ``query_key_value``,
parallel residual with two norms (or sequential when ``use_parallel_residual`` is False).
"""

from __future__ import annotations

from typing import Any

from octavo.layers import rope_config_from_hf
from octavo_models.decoder import DecoderForCausalLM, DecoderSpec
from octavo_models.weight_map import WeightRule, grouped_qkv_to_merged


class GPTNeoXForCausalLM(DecoderForCausalLM):
    checkpoint_prefix = "gpt_neox"

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

    def weight_rules(self) -> list[WeightRule]:
        spec = self.spec
        layer = "gpt_neox.layers.{i}"
        to_merged = grouped_qkv_to_merged(spec.num_heads, spec.num_kv_heads, spec.head_dim)
        return [
            WeightRule("gpt_neox.embed_in.weight", "embed_tokens.weight"),
            WeightRule(f"{layer}.input_layernorm.{{p}}", "layers.{i}.attn_norm.{p}"),
            WeightRule(f"{layer}.attention.query_key_value.{{p}}",
                       "layers.{i}.attn.qkv_proj.{p}", transform=to_merged),
            WeightRule(f"{layer}.attention.dense.{{p}}", "layers.{i}.attn.o_proj.{p}"),
            WeightRule(f"{layer}.post_attention_layernorm.{{p}}", "layers.{i}.mlp_norm.{p}"),
            WeightRule(f"{layer}.mlp.dense_h_to_4h.{{p}}", "layers.{i}.mlp.up_proj.{p}"),
            WeightRule(f"{layer}.mlp.dense_4h_to_h.{{p}}", "layers.{i}.mlp.down_proj.{p}"),
            WeightRule("gpt_neox.final_layer_norm.{p}", "norm.{p}"),
            *(WeightRule(name, None if spec.tie_word_embeddings else "lm_head.weight")
              for name in ("embed_out.weight", "lm_head.weight")),  # transformers 4 / 5
            # buffers older checkpoints carry
            WeightRule(f"{layer}.attention.bias", None),
            WeightRule(f"{layer}.attention.masked_bias", None),
            WeightRule(f"{layer}.attention.rotary_emb.inv_freq", None),
        ]
