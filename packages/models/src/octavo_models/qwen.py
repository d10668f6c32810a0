"""QWen (first generation, ``QWenLMHeadModel``): a Llama-family block under its own names.

The checkpoint is the remote-code layout of Qwen-7B/14B/72B and Qwen-1.8B::

    transformer.wte                      -> embedding
    transformer.h.N.ln_1 / ln_2          -> input / post-attention RMSNorm
    transformer.h.N.attn.c_attn          -> fused [q | k | v] (always with bias)
    transformer.h.N.attn.c_proj          -> output projection (bias unless ``no_bias``)
    transformer.h.N.mlp.w2 / w1 / c_proj -> gate / up / down: ``c_proj(w1(x) * silu(w2(x)))``
    transformer.ln_f                     -> final RMSNorm

Its config.json spells the Llama fields its own way: ``layer_norm_epsilon``,
``rotary_emb_base``, ``kv_channels`` (the head size), and ``intermediate_size`` is twice the
width of ``w1`` / ``w2``. Dynamic NTK rotary scaling and log-n attention scaling
(``use_dynamic_ntk``, ``use_logn_attn``) only change the model past ``seq_length`` tokens, so
with either on the context is capped at ``seq_length``, where the model is exact.
"""

from __future__ import annotations

from typing import Any

from octavo_models.llama import CheckpointLayout, LlamaForCausalLM
from octavo_models.weight_map import WeightRule

QWEN_LAYOUT = CheckpointLayout(
    embed="transformer.wte.weight", final_norm="transformer.ln_f.weight",
    layer="transformer.h.{i}", input_norm="ln_1.weight", post_norm="ln_2.weight",
    qkv="attn.c_attn.{p}", o="attn.c_proj.{p}", gate="mlp.w2.{p}", up="mlp.w1.{p}",
    down="mlp.c_proj.{p}", ignored=("transformer.rotary_emb.inv_freq",))


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

    @classmethod
    def llama_config_fields(cls, config: Any) -> dict[str, Any]:
        return qwen_llama_fields(config)

    def weight_rules(self) -> list[WeightRule]:
        return QWEN_LAYOUT.rules(tied=self.tie_word_embeddings)
