"""Rotary embedding vs HF's LlamaRotaryEmbedding / apply_rotary_pos_emb, and config parsing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from octavo.layers.rotary import (
    RopeConfig,
    RotaryEmbedding,
    apply_rotary,
    get_rope,
    rope_config_from_hf,
)

HEAD = 32
ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 16},
    "yarn-mscale": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                    "original_max_position_embeddings": 16, "mscale": 0.707,
                    "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2},
}


def llama_config(rope: dict, max_pos: int = 64) -> LlamaConfig:
    return LlamaConfig(hidden_size=HEAD * 4, num_attention_heads=4, head_dim=HEAD,
                       max_position_embeddings=max_pos, rope_parameters=dict(rope))


def hf_cos_sin(config, positions: torch.Tensor):
    """HF's cos/sin ``[T, head]`` for positions, from a fresh rotary module."""
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32),
                                            positions[None])
    return cos[0], sin[0]


@pytest.mark.parametrize("name", list(ROPES))
def test_cos_sin_match_hf_exactly(name):
    config = llama_config(ROPES[name])
    positions = torch.arange(64)
    cos, sin = get_rope(config, HEAD).cos_sin(positions)
    hf_cos, hf_sin = hf_cos_sin(config, positions)
    torch.testing.assert_close(torch.cat((cos, cos), -1), hf_cos, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat((sin, sin), -1), hf_sin, rtol=0, atol=0)


@pytest.mark.parametrize("position", [64, 65, 100, 300])
def test_dynamic_ntk_beyond_context_matches_hf_decode(position):
    """Past max_position_embeddings HF rescales by the sequence length; one token at a time."""
    config = llama_config(ROPES["dynamic"])
    positions = torch.tensor([position])
    cos, sin = get_rope(config, HEAD).cos_sin(positions)
    hf_cos, hf_sin = hf_cos_sin(config, positions)
    torch.testing.assert_close(torch.cat((cos, cos), -1), hf_cos, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat((sin, sin), -1), hf_sin, rtol=1e-6, atol=1e-6)
    default_cos, _ = get_rope(llama_config(ROPES["default"]), HEAD).cos_sin(positions)
    assert not torch.allclose(cos, default_cos)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["default", "llama3", "yarn"])
def test_apply_rotary_matches_hf(name, dtype):
    config = llama_config(ROPES[name])
    gen = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 64, (11,), generator=gen)
    q = torch.randn(11, 4, HEAD, generator=gen).to(dtype)  # [T, H, D]
    k = torch.randn(11, 2, HEAD, generator=gen).to(dtype)
    rope = get_rope(config, HEAD)
    q_out, k_out = rope(positions, q, k)
    hf_cos, hf_sin = LlamaRotaryEmbedding(config)(q, positions[None])
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                      hf_cos, hf_sin)
    torch.testing.assert_close(q_out, hf_q[0].transpose(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(k_out, hf_k[0].transpose(0, 1), rtol=0, atol=0)


def _complex_reference(x, positions, inv_freq, rotary_dim, neox):
    """RoPE as a complex rotation of (x_i, x_j) pairs; the untouched tail passes through."""
    angles = positions.double()[:, None] * inv_freq.double()[None]  # [T, rot / 2]
    rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]  # [T, 1, rot / 2]
    xr = x[..., :rotary_dim].double()
    if neox:
        pairs = torch.complex(xr[..., : rotary_dim // 2], xr[..., rotary_dim // 2:]) * rot
        out = torch.cat((pairs.real, pairs.imag), -1)
    else:
        pairs = torch.complex(xr[..., 0::2], xr[..., 1::2]) * rot
        out = torch.stack((pairs.real, pairs.imag), -1).flatten(-2)
    return torch.cat((out, x[..., rotary_dim:].double()), -1).float()


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("rotary_dim", [HEAD, HEAD // 2])
def test_partial_and_gptj_style_rotation(neox, rotary_dim):
    rope = RotaryEmbedding(RopeConfig(theta=10000.0, rotary_dim=rotary_dim,
                                      is_neox_style=neox))
    gen = torch.Generator().manual_seed(1)
    positions = torch.arange(0, 40, 3)
    x = torch.randn(len(positions), 3, HEAD, generator=gen)
    cos, sin = rope.cos_sin(positions)
    out = apply_rotary(x, cos, sin, neox)
    expected = _complex_reference(x, positions, rope.inv_freq, rotary_dim, neox)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_config_forms_transformers5_and_4():
    new = llama_config(ROPES["llama3"])
    parsed = rope_config_from_hf(new, HEAD)
    assert (parsed.rope_type, parsed.theta, parsed.rotary_dim) == ("llama3", 500000.0, HEAD)
    assert parsed.scaling["factor"] == 8.0 and "rope_theta" not in parsed.scaling
    # transformers 4.x attribute form
    old = SimpleNamespace(rope_theta=5000.0, rope_scaling={"type": "linear", "factor": 2.0},
                          max_position_embeddings=64)
    parsed = rope_config_from_hf(old, HEAD)
    assert (parsed.rope_type, parsed.theta, parsed.scaling) == ("linear", 5000.0,
                                                                {"factor": 2.0})
    plain = rope_config_from_hf(SimpleNamespace(rope_theta=None, rope_scaling=None), HEAD)
    assert (plain.rope_type, plain.theta, plain.scaling) == ("default", 10000.0, {})
    # legacy kwargs given to a transformers-5 config are converted; both must agree
    legacy = LlamaConfig(hidden_size=128, num_attention_heads=4, head_dim=HEAD,
                         rope_theta=5000.0, rope_scaling={"type": "linear", "factor": 2.0})
    assert rope_config_from_hf(legacy, HEAD) == rope_config_from_hf(old, HEAD).__class__(
        rope_type="linear", theta=5000.0, rotary_dim=HEAD,
        max_position_embeddings=legacy.max_position_embeddings, scaling={"factor": 2.0})


def test_old_form_cos_sin_equal_new_form():
    old = SimpleNamespace(rope_theta=10000.0, max_position_embeddings=64,
                          rope_scaling={"type": "linear", "factor": 4.0})
    positions = torch.arange(50)
    old_cos, _ = get_rope(old, HEAD).cos_sin(positions)
    new_cos, _ = get_rope(llama_config(ROPES["linear"]), HEAD).cos_sin(positions)
    torch.testing.assert_close(old_cos, new_cos, rtol=0, atol=0)


def test_unsupported_rope_type_is_a_clear_error():
    config = SimpleNamespace(rope_theta=1e4, rope_scaling={"rope_type": "longrope"})
    with pytest.raises(ValueError, match="unsupported rope_type 'longrope'"):
        rope_config_from_hf(config, HEAD)
