"""One decoder-only transformer, parametrised per family by a :class:`DecoderSpec`.

GPT-2, OPT, GPT-J, GPT-NeoX, Falcon and MPT differ in where norms sit, whether attention and
MLP run in parallel, how positions enter (learned table, rotary, ALiBi), which projections
carry a bias, and how the checkpoint names and fuses its tensors. A family module turns its HF
config into a :class:`DecoderSpec` and declares where its checkpoint keeps each tensor as a
:class:`DecoderLayout` (which becomes the :class:`WeightRule` s); the layers here do the rest.

Parameter names (what the weight rules target)::

    embed_tokens.weight                 embed_positions.weight (learned positions)
    project_in.weight                   project_out.weight (OPT's word_embed_proj_dim)
    layers.{i}.attn_norm.{weight,bias}  layers.{i}.mlp_norm.* (absent when shared_norm)
    layers.{i}.attn.qkv_proj.*          layers.{i}.attn.o_proj.*
    layers.{i}.mlp.up_proj.*            layers.{i}.mlp.down_proj.*
    norm.*                              lm_head.weight, lm_head_bias
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from octavo.layers import (
    Activation,
    ColumnParallelLinear,
    LayerNorm,
    ParallelLMHead,
    ReplicatedLinear,
    RopeConfig,
    RotaryEmbedding,
    RowParallelLinear,
    VocabParallelEmbedding,
    process_weights_after_loading,
)
from octavo.modeling import CausalLM, KVCacheSpec, ModelContext
from octavo_models.attention_block import AttentionBlock
from octavo_models.weight_map import WeightRule, load_mapped_weights


@dataclass(frozen=True)
class DecoderSpec:
    """The shape and block layout of one decoder-only model.

    Attributes:
        parallel_residual: ``x + attn(norm_a(x)) + mlp(norm_m(x))`` instead of two sequential
            residual blocks.
        shared_norm: in a parallel block, attention and MLP read the same norm (no mlp_norm).
        norm_first: pre-norm blocks; False is OPT-350m's post-norm
            (``norm(x + attn(x))``), which also has no final norm.
        rope: rotary positions (``rotary_dim`` may be less than ``head_size``).
        max_positions: size of a learned position table (0: none); ``position_offset`` is
            added to positions before the lookup (OPT's 2).
        alibi_slopes: per-head ALiBi slopes, already multiplied by whatever scale the family
            applies to the bias.
        attn_scale: the softmax scale; ``scale_by_inverse_layer`` divides it by ``layer + 1``.
        qkv_clip: clamp the fused q/k/v to ``[-qkv_clip, qkv_clip]`` (MPT's ``clip_qkv``).
        embed_dim: the width of the token embedding and LM head when it differs from
            ``hidden_size`` (OPT projects in and out).
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    activation: str
    norm_eps: float
    head_size: int = 0  # 0: hidden_size // num_heads
    norm_bias: bool = True
    qkv_bias: bool = True
    o_bias: bool = True
    mlp_bias: bool = True
    parallel_residual: bool = False
    shared_norm: bool = False
    norm_first: bool = True
    rope: RopeConfig | None = None
    max_positions: int = 0
    position_offset: int = 0
    alibi_slopes: tuple[float, ...] | None = None
    attn_scale: float | None = None  # None: head_size ** -0.5
    scale_by_inverse_layer: bool = False
    qkv_clip: float | None = None
    tie_word_embeddings: bool = True
    lm_head_bias: bool = False
    embed_dim: int | None = None

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_heads

    def kv_cache_spec(self) -> KVCacheSpec:
        return KVCacheSpec(self.num_layers, self.num_kv_heads, self.head_dim)


@dataclass(frozen=True)
class DecoderLayout:
    """Where a checkpoint keeps each tensor of the decoder.

    ``embed``, ``positions``, ``lm_head`` and ``lm_head_bias`` are tensor names. The others
    name modules, whose ``weight``, ``bias`` and quantized tensors all follow as ``{p}``; the
    per-layer ones are relative to ``layer`` (``{i}``: the layer index). Names are
    :class:`~octavo_models.weight_map.WeightRule` templates.

    Attributes:
        qkv: one fused ``[q | k | v]`` projection, or the separate q, k and v projections.
        mlp_norm: None where a block has only one norm (GPT-J).
        positions: the learned position table, if any.
        lm_head: every name the LM head goes by (a checkpoint holds one of them).
        linear_transform: applied to the four projections' tensors (GPT-2's ``Conv1D``).
        qkv_transform: the fused qkv's own layout transform, in place of ``linear_transform``.
        layer_buffers: per-layer tensors the model does not use (causal-mask buffers, rotary
            ``inv_freq``).
        extra: rules for tensors only some families have (OPT's ``project_in``).
    """

    embed: str
    layer: str
    attn_norm: str
    qkv: str | tuple[str, str, str]
    o: str
    up: str
    down: str
    final_norm: str
    mlp_norm: str | None = None
    positions: str | None = None
    lm_head: tuple[str, ...] = ("lm_head.weight",)
    lm_head_bias: str | None = None
    linear_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    qkv_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    layer_buffers: tuple[str, ...] = ()
    extra: tuple[WeightRule, ...] = ()

    def rules(self, *, tied: bool) -> list[WeightRule]:
        """The weight rules onto :class:`DecoderForCausalLM`'s parameters."""
        linear = self.linear_transform
        qkv_transform = self.qkv_transform or linear
        qkv = ([(self.qkv, None)] if isinstance(self.qkv, str)
               else list(zip(self.qkv, "qkv", strict=True)))
        per_layer = [(self.attn_norm, "attn_norm", None, None),
                     *((name, "attn.qkv_proj", shard, qkv_transform) for name, shard in qkv),
                     (self.o, "attn.o_proj", None, linear),
                     (self.mlp_norm, "mlp_norm", None, None),
                     (self.up, "mlp.up_proj", None, linear),
                     (self.down, "mlp.down_proj", None, linear)]
        tensors = [(self.embed, "embed_tokens.weight"), (self.positions, "embed_positions.weight"),
                   (f"{self.final_norm}.{{p}}", "norm.{p}"),
                   *((name, None if tied else "lm_head.weight") for name in self.lm_head),
                   (self.lm_head_bias, "lm_head_bias")]
        return [
            *(WeightRule(source, target) for source, target in tensors if source is not None),
            *(WeightRule(f"{self.layer}.{source}.{{p}}", f"layers.{{i}}.{target}.{{p}}",
                         shard=shard, transform=transform)
              for source, target, shard, transform in per_layer if source is not None),
            *self.extra,
            *(WeightRule(f"{self.layer}.{name}", None) for name in self.layer_buffers),
        ]


def _common(ctx: ModelContext) -> dict[str, Any]:
    return dict(parallel=ctx.parallel, quant_method=ctx.quantization, dtype=ctx.dtype,
                device=ctx.device)


def decoder_attention(spec: DecoderSpec, ctx: ModelContext, layer_idx: int,
                      prefix: str) -> AttentionBlock:
    """Layer ``layer_idx``'s attention block, as ``spec`` lays it out."""
    d = spec.head_dim
    scale = spec.attn_scale if spec.attn_scale is not None else d ** -0.5
    if spec.scale_by_inverse_layer:
        scale /= layer_idx + 1
    return AttentionBlock(
        ctx, prefix, hidden_size=spec.hidden_size, num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads, head_dim=d, qkv_bias=spec.qkv_bias, o_bias=spec.o_bias,
        scale=scale, alibi_slopes=spec.alibi_slopes, qkv_clip=spec.qkv_clip,
        is_neox_style=spec.rope.is_neox_style if spec.rope is not None else True)


class DecoderMLP(nn.Module):
    """``down(act(up(x)))``."""

    def __init__(self, spec: DecoderSpec, ctx: ModelContext, prefix: str) -> None:
        super().__init__()
        self.up_proj = ColumnParallelLinear(spec.hidden_size, spec.intermediate_size,
                                            bias=spec.mlp_bias, prefix=f"{prefix}.up_proj",
                                            **_common(ctx))
        self.act = Activation(spec.activation)
        self.down_proj = RowParallelLinear(spec.intermediate_size, spec.hidden_size,
                                           bias=spec.mlp_bias, prefix=f"{prefix}.down_proj",
                                           **_common(ctx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> [T, hidden]
        return self.down_proj(self.act(self.up_proj(x)))  # via [T, intermediate / tp]


class DecoderLayer(nn.Module):
    """Attention and MLP with residuals, in the spec's sequential or parallel layout."""

    def __init__(self, spec: DecoderSpec, ctx: ModelContext, layer_idx: int, prefix: str) -> None:
        super().__init__()
        self.spec = spec
        norm = dict(bias=spec.norm_bias, dtype=ctx.dtype, device=ctx.device)
        self.attn_norm = LayerNorm(spec.hidden_size, spec.norm_eps, **norm)
        self.attn = decoder_attention(spec, ctx, layer_idx, f"{prefix}.attn")
        if not (spec.parallel_residual and spec.shared_norm):
            self.mlp_norm = LayerNorm(spec.hidden_size, spec.norm_eps, **norm)
        self.mlp = DecoderMLP(spec, ctx, f"{prefix}.mlp")

    def forward(self, x, cos_sin, kv_cache, metadata) -> torch.Tensor:  # [T, hidden]
        if not self.spec.norm_first:
            h = self.attn_norm(x + self.attn(x, cos_sin, kv_cache, metadata))
            return self.mlp_norm(h + self.mlp(h))
        normed = self.attn_norm(x)
        attn = self.attn(normed, cos_sin, kv_cache, metadata)
        if self.spec.parallel_residual:
            mlp_in = normed if self.spec.shared_norm else self.mlp_norm(x)
            return x + attn + self.mlp(mlp_in)
        h = x + attn
        return h + self.mlp(self.mlp_norm(h))


class DecoderForCausalLM(CausalLM):
    """A causal LM built from :meth:`decoder_spec` and loaded through its checkpoint's layout.

    Subclasses (one per family) implement :meth:`decoder_spec`, set ``layout`` (or override
    :meth:`checkpoint_layout` where the config decides the names or transforms) and set
    ``checkpoint_prefix`` to HF's base model prefix, so checkpoints saved without it load too.
    """

    checkpoint_prefix: ClassVar[str] = ""
    layout: ClassVar[DecoderLayout | None] = None

    @classmethod
    def decoder_spec(cls, config: Any) -> DecoderSpec:
        raise NotImplementedError

    def checkpoint_layout(self) -> DecoderLayout:
        """Where this model's checkpoint keeps each tensor: ``layout`` by default."""
        if self.layout is None:
            raise NotImplementedError(f"{type(self).__name__} declares no checkpoint layout")
        return self.layout

    def weight_rules(self) -> Sequence[WeightRule]:
        return self.checkpoint_layout().rules(tied=self.spec.tie_word_embeddings)

    @classmethod
    def kv_cache_spec(cls, config: Any) -> KVCacheSpec:
        return cls.decoder_spec(config).kv_cache_spec()

    def __init__(self, config: Any, ctx: ModelContext) -> None:
        super().__init__(config, ctx)
        spec = self.decoder_spec(config)
        self.spec = spec
        embed_dim = spec.embed_dim or spec.hidden_size
        place = dict(dtype=ctx.dtype, device=ctx.device)
        self.embed_tokens = VocabParallelEmbedding(spec.vocab_size, embed_dim,
                                                   parallel=ctx.parallel, **place)
        if spec.max_positions:
            self.embed_positions = VocabParallelEmbedding(
                spec.max_positions + spec.position_offset, spec.hidden_size,
                parallel=ctx.parallel, **place)
        if embed_dim != spec.hidden_size:
            self.project_in = ReplicatedLinear(embed_dim, spec.hidden_size, prefix="project_in",
                                               **_common(ctx))
            self.project_out = ReplicatedLinear(spec.hidden_size, embed_dim,
                                                prefix="project_out", **_common(ctx))
        self.rotary = (RotaryEmbedding(spec.rope, device=ctx.device)
                       if spec.rope is not None else None)
        self.layers = nn.ModuleList(DecoderLayer(spec, ctx, i, f"layers.{i}")
                                    for i in range(spec.num_layers))
        if spec.norm_first:
            self.norm = LayerNorm(spec.hidden_size, spec.norm_eps, bias=spec.norm_bias, **place)
        self.lm_head = ParallelLMHead(
            spec.vocab_size, embed_dim, parallel=ctx.parallel, **place,
            tied_to=self.embed_tokens if spec.tie_word_embeddings else None)
        if spec.lm_head_bias:  # every rank holds the whole bias
            self.lm_head_bias = nn.Parameter(torch.empty(spec.vocab_size, **place),
                                             requires_grad=False)

    def forward(self, input_ids, positions, kv_caches, metadata):  # shapes: CausalLM.forward
        hidden = self.embed_tokens(input_ids)  # [T, embed_dim]
        if hasattr(self, "project_in"):
            hidden = self.project_in(hidden)  # [T, hidden]
        if self.spec.max_positions:
            hidden = hidden + self.embed_positions(positions + self.spec.position_offset)
        cos_sin = self.rotary.cos_sin(positions) if self.rotary is not None else None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden = layer(hidden, cos_sin, kv_cache, metadata)
        if self.spec.norm_first:
            hidden = self.norm(hidden)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, vocab] float32
        if hasattr(self, "project_out"):
            hidden = self.project_out(hidden)  # [n, embed_dim]
        logits = self.lm_head.compute_logits(hidden)
        if self.spec.lm_head_bias:
            logits = logits + self.lm_head_bias.float()
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = load_mapped_weights(self, weights, self.weight_rules(), self.checkpoint_prefix)
        process_weights_after_loading(self)
        return loaded
