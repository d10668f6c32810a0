"""MPT: ALiBi instead of positions, bias-free norms and projections, fused ``Wqkv``
(``[q | k | v]``), optional ``clip_qkv``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from octavo_models.decoder import DecoderForCausalLM, DecoderLayout, DecoderSpec

MPT_LAYOUT = DecoderLayout(
    embed="transformer.wte.weight", layer="transformer.blocks.{i}", attn_norm="norm_1",
    qkv="attn.Wqkv", o="attn.out_proj", mlp_norm="norm_2", up="ffn.up_proj",
    down="ffn.down_proj", final_norm="transformer.norm_f")


def mpt_alibi_slopes(num_heads: int, alibi_bias_max: float = 8.0) -> list[float]:
    """MPT's slopes: ``2^(-alibi_bias_max * k / n)`` for ``n`` the head count rounded up to a
    power of two, then odd ``k`` before even ones when heads are not a power of two (this
    differs from the ALiBi paper's slopes, :func:`octavo.layers.alibi_slopes`)."""
    padded = 2 ** math.ceil(math.log2(num_heads))
    slopes = [1.0 / 2 ** ((k + 1) * alibi_bias_max / padded) for k in range(padded)]
    if padded != num_heads:
        slopes = (slopes[1::2] + slopes[::2])[:num_heads]
    return slopes


def _attn_option(config: Any, name: str, default: Any = None) -> Any:
    attn = config.attn_config
    return attn.get(name, default) if isinstance(attn, dict) else getattr(attn, name, default)


class MptForCausalLM(DecoderForCausalLM):
    checkpoint_prefix = "transformer"
    layout = MPT_LAYOUT

    @classmethod
    def adapt_config(cls, config: Any) -> Any:
        """MPT calls its context length ``max_seq_len``."""
        if getattr(config, "max_position_embeddings", None) is not None:
            return config
        config = copy.copy(config)
        config.max_position_embeddings = config.max_seq_len
        return config

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        if not _attn_option(config, "alibi", True):
            raise ValueError("MPT without ALiBi (learned positions) is not supported")
        if _attn_option(config, "qk_ln", False):
            raise ValueError("MPT with qk_ln=True is not supported")
        heads, hidden = config.n_heads, config.d_model
        return DecoderSpec(
            vocab_size=config.vocab_size, hidden_size=hidden, num_layers=config.n_layers,
            num_heads=heads, num_kv_heads=heads,
            intermediate_size=int(config.expansion_ratio * hidden), activation="gelu",
            norm_eps=config.layer_norm_epsilon, norm_bias=False, qkv_bias=False, o_bias=False,
            mlp_bias=False,
            alibi_slopes=tuple(mpt_alibi_slopes(heads, _attn_option(config, "alibi_bias_max", 8))),
            attn_scale=_attn_option(config, "softmax_scale"),
            qkv_clip=_attn_option(config, "clip_qkv"),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)))
