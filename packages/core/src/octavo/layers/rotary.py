"""Rotary position embedding (RoPE) with HF's scaling variants.

Supported ``rope_type``: ``default``, ``linear``, ``dynamic`` (NTK), ``llama3`` and ``yarn``.
cos/sin are computed from the positions on the fly (no table sized by the context length),
exactly as HF computes them, so rotated queries and keys match HF bit for bit in float32.

HF config forms read by :func:`rope_config_from_hf`:

- transformers >= 5: ``config.rope_parameters = {"rope_type": ..., "rope_theta": ..., ...}``
- transformers 4.x: ``config.rope_theta`` plus ``config.rope_scaling = {"type" | "rope_type":
  ..., "factor": ..., ...}`` or None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from octavo.layers.layer_ops import find_layer_op

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass(frozen=True)
class RopeConfig:
    """What RoPE a model uses.

    Attributes:
        rope_type: one of :data:`SUPPORTED_ROPE_TYPES`.
        theta: the base wavelength.
        rotary_dim: how many leading dims of each head rotate (``head_size`` unless partial).
        max_position_embeddings: the model's context length (used by dynamic and yarn).
        scaling: the remaining scaling parameters (``factor``, ``low_freq_factor``...).
        is_neox_style: rotate the two halves (HF Llama) rather than even/odd pairs (GPT-J).
    """

    rope_type: str = "default"
    theta: float = 10000.0
    rotary_dim: int = 128
    max_position_embeddings: int = 2048
    scaling: dict[str, Any] = field(default_factory=dict)
    is_neox_style: bool = True


def rope_config_from_hf(config: Any, head_size: int, *, is_neox_style: bool = True,
                        default_theta: float = 10000.0) -> RopeConfig:
    """Read RoPE settings from an HF config, in the transformers 5 or 4.x form."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        scaling = dict(params)
        theta = scaling.pop("rope_theta")
    elif isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError("per-layer-type rope_parameters are not supported by this model")
    else:
        theta = getattr(config, "rope_theta", None) or default_theta
        scaling = dict(getattr(config, "rope_scaling", None) or {})
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rope_type!r}; supported: "
                         f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    partial = scaling.pop("partial_rotary_factor", None)
    if partial is None:
        partial = getattr(config, "partial_rotary_factor", None) or 1.0
    return RopeConfig(
        rope_type=rope_type, theta=float(theta), rotary_dim=int(head_size * partial),
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 2048)),
        scaling=scaling, is_neox_style=is_neox_style)


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:  # [dim // 2] float32
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3_inv_freq(rope: RopeConfig) -> torch.Tensor:
    inv_freq = _base_inv_freq(rope.theta, rope.rotary_dim)
    s = rope.scaling
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s.get("original_max_position_embeddings", rope.max_position_embeddings)
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(rope: RopeConfig) -> tuple[torch.Tensor, float]:
    s, dim, base = rope.scaling, rope.rotary_dim, rope.theta
    original = s.get("original_max_position_embeddings", rope.max_position_embeddings)
    factor = s.get("factor") or rope.max_position_embeddings / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention_factor = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # share of the extrapolated (unscaled) frequency
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


def compute_inv_freq(rope: RopeConfig) -> tuple[torch.Tensor, float]:
    """``(inv_freq [rotary_dim // 2] float32, attention_scaling)`` as HF initializes them."""
    if rope.rope_type in ("default", "dynamic"):
        if rope.rope_type == "default":  # HF's default path uses a float arange
            exps = torch.arange(0, rope.rotary_dim, 2, dtype=torch.float) / rope.rotary_dim
            return 1.0 / (rope.theta ** exps), 1.0
        return _base_inv_freq(rope.theta, rope.rotary_dim), 1.0
    if rope.rope_type == "linear":
        return _base_inv_freq(rope.theta, rope.rotary_dim) / rope.scaling["factor"], 1.0
    if rope.rope_type == "llama3":
        return _llama3_inv_freq(rope), 1.0
    if rope.rope_type == "yarn":
        return _yarn_inv_freq(rope)
    raise ValueError(f"unsupported rope_type {rope.rope_type!r}")


def apply_rotary(
    x: torch.Tensor,  # [num_tokens, num_heads, head_size]
    cos: torch.Tensor,  # [num_tokens, rotary_dim // 2]
    sin: torch.Tensor,
    is_neox_style: bool = True,
) -> torch.Tensor:  # [num_tokens, num_heads, head_size], a new tensor
    """Rotate the first ``rotary_dim`` dims of every head of ``x``.

    Runs a registered faster op for ``x``'s device and dtype if there is one (see
    :mod:`octavo.layers.layer_ops`), else :func:`apply_rotary_torch`, the oracle.
    """
    fast = find_layer_op("rotary", x)
    return (fast or apply_rotary_torch)(x, cos, sin, is_neox_style)


def apply_rotary_torch(
    x: torch.Tensor,  # [num_tokens, num_heads, head_size]
    cos: torch.Tensor,  # [num_tokens, rotary_dim // 2]
    sin: torch.Tensor,
    is_neox_style: bool = True,
) -> torch.Tensor:  # [num_tokens, num_heads, head_size], a new tensor
    """:func:`apply_rotary` in torch ops."""
    cos = cos.to(x.dtype).unsqueeze(-2)  # [T, 1, rot / 2]
    sin = sin.to(x.dtype).unsqueeze(-2)
    rot = 2 * cos.shape[-1]
    x_rot = x[..., :rot] if rot < x.shape[-1] else x
    if is_neox_style:
        x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2:]
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    if rot < x.shape[-1]:
        out = torch.cat((out, x[..., rot:]), dim=-1)
    return out


class RotaryEmbedding(nn.Module):
    """Computes cos/sin for positions and rotates queries and keys.

    Compute ``cos_sin(positions)`` once per forward and pass it to every layer's
    :func:`apply_rotary`, or call the module on ``(positions, query, key)``.
    """

    def __init__(self, rope: RopeConfig, *, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.rope = rope
        inv_freq, self.attention_scaling = compute_inv_freq(rope)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)
        exps = torch.arange(0, rope.rotary_dim, 2, dtype=torch.int64).float() / rope.rotary_dim
        self.register_buffer("_exponents", exps.to(device), persistent=False)

    @property
    def is_neox_style(self) -> bool:
        return self.rope.is_neox_style

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions [T] -> (cos, sin)``, each ``[T, rotary_dim // 2]`` float32."""
        pos = positions.float().unsqueeze(-1)  # [T, 1]
        if self.rope.rope_type == "dynamic":
            freqs = pos * self._dynamic_inv_freq(positions)
        else:
            freqs = pos * self.inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos, sin

    def _dynamic_inv_freq(self, positions: torch.Tensor) -> torch.Tensor:  # [T, rot / 2]
        """NTK-aware base per token, as HF computes it for a sequence of ``position + 1`` tokens.

        Equals the default frequencies within ``max_position_embeddings``; beyond it, matches HF
        decoding token by token (HF rescales a whole prefill by its longest sequence).
        """
        max_pos = self.rope.max_position_embeddings
        factor = self.rope.scaling["factor"]
        dim = self.rope.rotary_dim
        seq_len = torch.clamp(positions + 1, min=max_pos).float()  # float32, as HF computes it
        base = self.rope.theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (base.unsqueeze(-1) ** self._exponents)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor):
        """Rotate ``query [T, H, D]`` and ``key [T, KH, D]``; returns new tensors."""
        cos, sin = self.cos_sin(positions)
        return (apply_rotary(query, cos, sin, self.is_neox_style),
                apply_rotary(key, cos, sin, self.is_neox_style))

    def extra_repr(self) -> str:
        r = self.rope
        return f"{r.rope_type}, theta={r.theta}, rotary_dim={r.rotary_dim}"


def get_rope(config: Any, head_size: int, *, device: torch.device | str = "cpu",
             is_neox_style: bool = True) -> RotaryEmbedding:
    """The rotary embedding an HF config asks for."""
    return RotaryEmbedding(rope_config_from_hf(config, head_size, is_neox_style=is_neox_style),
                           device=device)
