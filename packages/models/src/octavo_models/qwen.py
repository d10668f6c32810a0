"""QWen (first generation, ``QWenLMHeadModel``): a Llama-family block under its own names.

The checkpoint is the remote-code layout of Qwen-7B/14B/72B and Qwen-1.8B::

    transformer.wte                     -> model.embed_tokens
    transformer.h.N.ln_1 / ln_2         -> input_layernorm / post_attention_layernorm (RMSNorm)
    transformer.h.N.attn.c_attn         -> self_attn.qkv_proj ([q | k | v], always with bias)
    transformer.h.N.attn.c_proj         -> self_attn.o_proj (bias unless ``no_bias``)
    transformer.h.N.mlp.w2 / w1 / c_proj -> mlp gate / up / down: ``c_proj(w1(x) * silu(w2(x)))``
    transformer.ln_f                    -> model.norm

Its config.json spells the Llama fields its own way: ``layer_norm_epsilon``,
``rotary_emb_base``, ``kv_channels`` (the head size), and ``intermediate_size`` is twice the
width of ``w1`` / ``w2``. Dynamic NTK rotary scaling and log-n attention scaling
(``use_dynamic_ntk``, ``use_logn_attn``) only change the model past ``seq_length`` tokens, so
with either on the context is capped at ``seq_length``, where the model is exact.
"""

from __future__ import annotations

from typing import Any

from octavo_models.llama import LlamaForCausalLM


def qwen_llama_fields(config: Any) -> dict[str, Any]:
    """The Llama-family config fields of a QWen config.json (defaults: QWen's ``QWenConfig``)."""
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    kv_channels = getattr(config, "kv_channels", head_dim)
    if kv_channels * heads != config.hidden_size:
        raise ValueError(f"QWen config: kv_channels ({kv_channels}) x num_attention_heads "
                         f"({heads}) must equal hidden_size ({config.hidden_size})")
    rotary_pct = getattr(config, "rotary_pct", 1.0)
    if rotary_pct != 1.0:
        raise ValueError(f"QWen config: rotary_pct {rotary_pct} is not supported (only 1.0, "
                         "which every published QWen checkpoint uses)")
    max_len = getattr(config, "max_position_embeddings", None) or config.seq_length
    if getattr(config, "use_dynamic_ntk", True) or getattr(config, "use_logn_attn", True):
        max_len = min(max_len, getattr(config, "seq_length", max_len))
    no_bias = bool(getattr(config, "no_bias", True))
    return dict(
        num_key_value_heads=heads, head_dim=head_dim,
        intermediate_size=config.intermediate_size // 2,
        rms_norm_eps=getattr(config, "layer_norm_epsilon", 1e-6),
        max_position_embeddings=max_len,
        rope_parameters={"rope_type": "default",
                         "rope_theta": float(getattr(config, "rotary_emb_base", 10000))},
        qkv_bias=True, attention_bias=not no_bias, mlp_bias=not no_bias, hidden_act="silu",
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


class QWenLMHeadModel(LlamaForCausalLM):
    """Serves ``QWenLMHeadModel`` checkpoints (no remote code needed)."""

    checkpoint_renames = (
        (r"^transformer\.wte\.", "model.embed_tokens."),
        (r"^transformer\.ln_f\.", "model.norm."),
        (r"^transformer\.h\.(\d+)\.", r"model.layers.\1."),
        (r"\.ln_1\.", ".input_layernorm."),
        (r"\.ln_2\.", ".post_attention_layernorm."),
        (r"\.attn\.c_attn\.", ".self_attn.qkv_proj."),
        (r"\.attn\.c_proj\.", ".self_attn.o_proj."),
        (r"\.mlp\.w1\.", ".mlp.up_proj."),
        (r"\.mlp\.w2\.", ".mlp.gate_proj."),
        (r"\.mlp\.c_proj\.", ".mlp.down_proj."),
    )

    @classmethod
    def llama_config_fields(cls, config: Any) -> dict[str, Any]:
        return qwen_llama_fields(config)

    def checkpoint_tensor_names(self) -> list[str]:
        config = self.config
        bias = ("weight", "bias") if config.mlp_bias else ("weight",)
        names = ["transformer.wte.weight", "transformer.ln_f.weight"]
        if not self.tie_word_embeddings:
            names.append("lm_head.weight")
        for i in range(config.num_hidden_layers):
            layer = f"transformer.h.{i}"
            names += [f"{layer}.ln_1.weight", f"{layer}.ln_2.weight",
                      f"{layer}.attn.c_attn.weight", f"{layer}.attn.c_attn.bias"]
            names += [f"{layer}.attn.c_proj.{kind}" for kind in bias]
            names += [f"{layer}.mlp.{proj}.{kind}" for proj in ("w1", "w2", "c_proj")
                      for kind in bias]
        return names
