"""Baichuan and Baichuan 2: the Llama block with a packed ``W_pack`` [q | k | v] projection.

- ``BaiChuanForCausalLM`` (Baichuan-7B): RoPE.
- ``BaichuanForCausalLM`` (Baichuan-13B, Baichuan2-7B, Baichuan2-13B): RoPE when config.json has
  ``max_position_embeddings`` (the field the RoPE modeling code reads: Baichuan2-7B), ALiBi
  when it only has ``model_max_length`` (the 13B models' ALiBi code). On every published
  checkpoint this agrees with the rule "RoPE iff hidden_size == 4096".
- Baichuan 2 (vocabulary 125696; Baichuan 1 has 64000) computes logits with ``NormHead``:
  each ``lm_head`` row is L2-normalized before use. It is normalized here once, at load time.

The ALiBi slopes are the paper's (``octavo.layers.alibi_slopes``), as Baichuan computes them.
Baichuan-13B biases key ``j`` by ``slope * j`` and Baichuan2-13B by ``slope * (j - i)``; the
two differ by a constant per query row, which softmax ignores, so both equal Octavo's ALiBi.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from octavo_models.llama import CheckpointLayout, LlamaForCausalLM
from octavo_models.weight_map import WeightRule

BAICHUAN2_VOCAB_SIZE = 125696

BAICHUAN_LAYOUT = CheckpointLayout(
    embed="model.embed_tokens.weight", final_norm="model.norm.weight", layer="model.layers.{i}",
    input_norm="input_layernorm.weight", post_norm="post_attention_layernorm.weight",
    qkv="self_attn.W_pack.weight", o="self_attn.o_proj.weight", gate="mlp.gate_proj.weight",
    up="mlp.up_proj.weight", down="mlp.down_proj.weight",
    ignored=("model.layers.{i}.self_attn.rotary_emb.inv_freq",))


def baichuan_llama_fields(config: Any, position_embedding: str) -> dict[str, Any]:
    """The Llama-family config fields of a Baichuan config.json."""
    max_len = (getattr(config, "max_position_embeddings", None)
               or getattr(config, "model_max_length", None))
    if max_len is None:
        raise ValueError("Baichuan config has neither max_position_embeddings nor "
                         "model_max_length")
    return dict(
        num_key_value_heads=config.num_attention_heads, max_position_embeddings=max_len,
        position_embedding=position_embedding,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def normalize_rows(weight: torch.Tensor) -> torch.Tensor:
    """Baichuan 2's ``NormHead``: every vocabulary row scaled to unit L2 norm."""
    return F.normalize(weight.float(), dim=-1).to(weight.dtype)


class BaichuanForCausalLM(LlamaForCausalLM):
    """Serves ``BaichuanForCausalLM`` checkpoints (Baichuan-13B, Baichuan 2; no remote code)."""

    @classmethod
    def position_embedding(cls, config: Any) -> str:
        """``"rope"`` or ``"alibi"``, from the raw config.json (see the module docstring)."""
        return "rope" if getattr(config, "max_position_embeddings", None) else "alibi"

    @classmethod
    def llama_config_fields(cls, config: Any) -> dict[str, Any]:
        return baichuan_llama_fields(config, cls.position_embedding(config))

    def weight_rules(self) -> list[WeightRule]:
        norm_head = self.config.vocab_size == BAICHUAN2_VOCAB_SIZE
        return BAICHUAN_LAYOUT.rules(tied=self.tie_word_embeddings,
                                     lm_head_transform=normalize_rows if norm_head else None)


class BaiChuanForCausalLM(BaichuanForCausalLM):
    """Serves ``BaiChuanForCausalLM`` checkpoints (Baichuan-7B: always RoPE)."""

    @classmethod
    def position_embedding(cls, config: Any) -> str:
        return "rope"
