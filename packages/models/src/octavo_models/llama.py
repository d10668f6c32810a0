"""The Llama family: Llama 1/2/3, CodeLlama, Yi, SmolLM, Mistral and Qwen2 in one implementation.

Differences between them come from the HF config alone:

- ``attention_bias`` (Llama: q/k/v/o), Qwen2's q/k/v bias (``model_type == "qwen2"``),
  ``qkv_bias`` (q/k/v only, when set), ``mlp_bias``;
- ``head_dim`` (may differ from ``hidden_size / num_attention_heads``);
- ``sliding_window`` (Mistral; Qwen2 only on the layers ``layer_types`` marks, i.e. when
  ``use_sliding_window``);
- ``tie_word_embeddings``, ``rms_norm_eps``, RoPE (``rope_parameters`` / ``rope_scaling``);
- ``position_embedding``: ``"rope"`` (default) or ``"alibi"`` (no rotary; Baichuan-13B).

Checkpoints load through a :class:`CheckpointLayout` (where the checkpoint keeps each tensor),
which turns into :class:`~octavo_models.weight_map.WeightRule` s: :data:`HF_LLAMA_LAYOUT` for HF's
own names. Families with the same block but their own checkpoint names and config fields (QWen,
Baichuan) subclass :class:`LlamaForCausalLM` with their own layout and a config mapping
(:meth:`~LlamaForCausalLM.llama_config_fields`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from octavo.layers import (
    GatedActivation,
    MergedColumnParallelLinear,
    ParallelLMHead,
    RMSNorm,
    RowParallelLinear,
    VocabParallelEmbedding,
    alibi_slopes,
    get_rope,
    process_weights_after_loading,
)
from octavo.modeling import CausalLM, ModelContext
from octavo_models.attention_block import AttentionBlock
from octavo_models.weight_map import WeightRule, load_mapped_weights


@dataclass(frozen=True)
class CheckpointLayout:
    """Where a checkpoint keeps each tensor of the Llama block.

    Names are :class:`~octavo_models.weight_map.WeightRule` templates; the per-layer ones are
    relative to ``layer`` (``{i}``: the layer index). A name ending in ``{p}`` covers the weight,
    the bias and whatever a quantization method stores. ``qkv`` is one fused ``[q | k | v]``
    tensor, or the names of the separate q, k and v tensors.
    """

    embed: str
    final_norm: str
    layer: str
    input_norm: str
    post_norm: str
    qkv: str | tuple[str, str, str]
    o: str
    gate: str
    up: str
    down: str
    lm_head: str = "lm_head.weight"
    ignored: tuple[str, ...] = ()  # buffers some checkpoints carry (rotary inv_freq)

    def rules(self, *, tied: bool,
              lm_head_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
              ) -> list[WeightRule]:
        """The weight rules onto :class:`LlamaForCausalLM`'s parameters."""
        qkv = ([(self.qkv, "self_attn.qkv_proj", None)] if isinstance(self.qkv, str)
               else [(name, "self_attn.qkv_proj", shard)
                     for name, shard in zip(self.qkv, "qkv", strict=True)])
        per_layer = [(self.input_norm, "input_layernorm", None),
                     (self.post_norm, "post_attention_layernorm", None),
                     *qkv, (self.o, "self_attn.o_proj", None),
                     (self.gate, "mlp.gate_up_proj", 0), (self.up, "mlp.gate_up_proj", 1),
                     (self.down, "mlp.down_proj", None)]
        rules = [WeightRule(self.embed, "model.embed_tokens.weight"),
                 WeightRule(self.final_norm, "model.norm.weight"),
                 WeightRule(self.lm_head, None if tied else "lm_head.weight",
                            transform=lm_head_transform)]
        for source, target, shard in per_layer:
            kind = "{p}" if source.endswith("{p}") else "weight"
            rules.append(WeightRule(f"{self.layer}.{source}",
                                    f"model.layers.{{i}}.{target}.{kind}", shard=shard))
        return rules + [WeightRule(name, None) for name in self.ignored]


HF_LLAMA_LAYOUT = CheckpointLayout(
    embed="model.embed_tokens.weight", final_norm="model.norm.weight", layer="model.layers.{i}",
    input_norm="input_layernorm.weight", post_norm="post_attention_layernorm.weight",
    qkv=("self_attn.q_proj.{p}", "self_attn.k_proj.{p}", "self_attn.v_proj.{p}"),
    o="self_attn.o_proj.{p}", gate="mlp.gate_proj.{p}", up="mlp.up_proj.{p}",
    down="mlp.down_proj.{p}",
    # rotary buffers (inv_freq, cos / sin caches) that older checkpoints carry
    ignored=("model.layers.{i}.self_attn.rotary_emb.{p}", "model.rotary_emb.{p}"))


def head_dim_of(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def attention_biases(config: Any) -> tuple[bool, bool]:
    """(bias on q/k/v, bias on o_proj) for this config."""
    if getattr(config, "model_type", None) == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bool(getattr(config, "qkv_bias", bias)), bias


def uses_alibi(config: Any) -> bool:
    """Whether attention scores get ALiBi biases instead of rotary positions."""
    kind = getattr(config, "position_embedding", "rope")
    if kind not in ("rope", "alibi"):
        raise ValueError(f"position_embedding must be 'rope' or 'alibi', got {kind!r}")
    return kind == "alibi"


def sliding_window_of(config: Any, layer_idx: int) -> int | None:
    """The sliding window of layer ``layer_idx`` (None: full attention)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    if hasattr(config, "use_sliding_window"):  # Qwen2 configs from transformers < 4.53
        max_window_layers = getattr(config, "max_window_layers", 0)
        return window if config.use_sliding_window and layer_idx >= max_window_layers else None
    return window


def llama_attention(config: Any, ctx: ModelContext, layer_idx: int,
                    prefix: str) -> AttentionBlock:
    """Layer ``layer_idx``'s attention block: fused QKV, RoPE or ALiBi, output projection."""
    num_heads = config.num_attention_heads
    qkv_bias, o_bias = attention_biases(config)
    return AttentionBlock(
        ctx, prefix, hidden_size=config.hidden_size, num_heads=num_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim_of(config), qkv_bias=qkv_bias, o_bias=o_bias,
        sliding_window=sliding_window_of(config, layer_idx),
        alibi_slopes=alibi_slopes(num_heads) if uses_alibi(config) else None)


class LlamaMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with gate and up fused into one matmul."""

    def __init__(self, config: Any, ctx: ModelContext, prefix: str) -> None:
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        inter = config.intermediate_size
        common = dict(parallel=ctx.parallel, quant_method=ctx.quantization, dtype=ctx.dtype,
                      device=ctx.device)
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [inter, inter], bias=bias, prefix=f"{prefix}.gate_up_proj",
            **common)
        self.down_proj = RowParallelLinear(inter, config.hidden_size, bias=bias,
                                           prefix=f"{prefix}.down_proj", **common)
        self.act = GatedActivation(getattr(config, "hidden_act", "silu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> [T, hidden]
        return self.down_proj(self.act(self.gate_up_proj(x)))  # via [T, 2 * inter / tp]


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks; the residual add is fused into the next norm."""

    def __init__(self, config: Any, ctx: ModelContext, layer_idx: int, prefix: str) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        norm = dict(dtype=ctx.dtype, device=ctx.device)
        self.self_attn = llama_attention(config, ctx, layer_idx, f"{prefix}.self_attn")
        self.mlp = LlamaMLP(config, ctx, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps, **norm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, **norm)

    def forward(self, hidden, residual, cos_sin, kv_cache, metadata):
        """Returns ``(mlp output, residual)``; their sum is the layer's output."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, cos_sin, kv_cache, metadata)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers and final norm (HF's ``model.*``)."""

    def __init__(self, config: Any, ctx: ModelContext, prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, parallel=ctx.parallel, dtype=ctx.dtype,
            device=ctx.device)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, ctx, i, f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=ctx.dtype,
                            device=ctx.device)
        self.rotary_emb = (None if uses_alibi(config)
                           else get_rope(config, head_dim_of(config), device=ctx.device))

    def forward(self, input_ids, positions, kv_caches, metadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # [T, hidden]
        # once for all layers
        cos_sin = None if self.rotary_emb is None else self.rotary_emb.cos_sin(positions)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, cos_sin, kv_cache, metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(CausalLM):
    """Serves HF ``LlamaForCausalLM``, ``MistralForCausalLM`` and ``Qwen2ForCausalLM``.

    ``config`` is what :meth:`adapt_config` returned (the loader adapts it once). Parameters are
    allocated uninitialized (``torch.empty``) on ``ctx.device`` in ``ctx.dtype``;
    :meth:`load_weights` fills them through :meth:`weight_rules`.
    """

    def __init__(self, config: Any, ctx: ModelContext) -> None:
        super().__init__(config, ctx)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.model = LlamaModel(config, ctx)
        self.lm_head = ParallelLMHead(
            config.vocab_size, config.hidden_size, parallel=ctx.parallel, dtype=ctx.dtype,
            device=ctx.device,
            tied_to=self.model.embed_tokens if self.tie_word_embeddings else None)

    def forward(self, input_ids, positions, kv_caches, metadata):  # shapes: CausalLM.forward
        return self.model(input_ids, positions, kv_caches, metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, vocab] float32
        return self.lm_head.compute_logits(hidden)

    # ---- config and checkpoint layouts of families built on this one -------------------------

    @classmethod
    def llama_config_fields(cls, config: Any) -> dict[str, Any]:
        """Llama-family config fields (``rms_norm_eps``, ``num_key_value_heads``...) that this
        family's config.json spells its own way; empty for HF's own Llama-family configs."""
        return {}

    @classmethod
    def adapt_config(cls, config: Any) -> Any:
        """A copy of ``config`` with :meth:`llama_config_fields` set (``config`` itself when there
        are none)."""
        fields = cls.llama_config_fields(config)
        if not fields:
            return config
        adapted = copy.deepcopy(config)
        for key, value in fields.items():
            setattr(adapted, key, value)
        return adapted

    def weight_rules(self) -> list[WeightRule]:
        """The checkpoint name map: HF Llama's names (families with their own
        :class:`CheckpointLayout` override this)."""
        return HF_LLAMA_LAYOUT.rules(tied=self.tie_word_embeddings)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = load_mapped_weights(self, weights, self.weight_rules())
        process_weights_after_loading(self)
        return loaded
