"""The Llama family (Llama, Mistral, Qwen2) against HF transformers, via the conformance suite."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config

from octavo.layers.layer_ops import LAYER_OPS_ENV
from octavo.testing.model_suite import ModelConformanceSuite
from octavo_models.llama import LlamaForCausalLM, sliding_window_of

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


class TestLlama(ModelConformanceSuite):
    def hf_config(self):
        return LlamaConfig(**TINY, rms_norm_eps=1e-5, architectures=["LlamaForCausalLM"])


class TestLlamaTiedLlama3Rope(ModelConformanceSuite):
    """Llama 3.x rope scaling (small original context so every branch is hit), tied embeddings."""

    prompt_lens = (9, 21, 4)

    def hf_config(self):
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}
        return LlamaConfig(**TINY, rope_parameters=rope, tie_word_embeddings=True,
                           architectures=["LlamaForCausalLM"])


class TestLlamaBiasHeadDim(ModelConformanceSuite):
    """attention_bias and mlp_bias, head_dim != hidden / heads, linear rope scaling, MHA."""

    def hf_config(self):
        cfg = dict(TINY, num_key_value_heads=4)
        return LlamaConfig(**cfg, head_dim=24, attention_bias=True, mlp_bias=True,
                           rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                            "factor": 2.0},
                           architectures=["LlamaForCausalLM"])


class TestLlamaYarnRope(ModelConformanceSuite):
    def hf_config(self):
        rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                "original_max_position_embeddings": 32}
        return LlamaConfig(**TINY, rope_parameters=rope, architectures=["LlamaForCausalLM"])


class TestMistralSlidingWindow(ModelConformanceSuite):
    """A sliding window of 8 with prompts and decodes well past it."""

    prompt_lens = (12, 19, 5)
    decode_steps = 5

    def hf_config(self):
        return MistralConfig(**TINY, sliding_window=8, architectures=["MistralForCausalLM"])


class TestMistralNoWindow(ModelConformanceSuite):
    def hf_config(self):
        return MistralConfig(**TINY, sliding_window=None, tie_word_embeddings=True,
                             architectures=["MistralForCausalLM"])


class TestQwen2(ModelConformanceSuite):
    """QKV bias (o_proj without), default rope theta from rope_parameters."""

    def hf_config(self):
        return Qwen2Config(**TINY, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                           architectures=["Qwen2ForCausalLM"])


class TestQwen2SlidingWindowLayers(ModelConformanceSuite):
    """use_sliding_window: only layers >= max_window_layers slide."""

    prompt_lens = (12, 17, 4)

    def hf_config(self):
        return Qwen2Config(**TINY, use_sliding_window=True, sliding_window=6,
                           max_window_layers=1, architectures=["Qwen2ForCausalLM"])


def test_qwen2_sliding_window_only_when_enabled():
    off = Qwen2Config(**TINY, use_sliding_window=False, sliding_window=6)
    on = Qwen2Config(**TINY, use_sliding_window=True, sliding_window=6, max_window_layers=1)
    assert [sliding_window_of(off, i) for i in range(2)] == [None, None]
    assert [sliding_window_of(on, i) for i in range(2)] == [None, 6]
    mistral = MistralConfig(**TINY, sliding_window=8)
    assert [sliding_window_of(mistral, i) for i in range(2)] == [8, 8]
    assert sliding_window_of(LlamaConfig(**TINY), 0) is None


class TestSuiteCatchesBugs:
    """The suite's checks fail on a model that is subtly wrong."""

    suite = TestLlama()

    @pytest.fixture(autouse=True)
    def plain_weights(self, monkeypatch):
        """The mutations below edit loaded weights in place: keep them unpacked (a packed CPU
        weight is opaque; see octavo/layers/dense.py)."""
        monkeypatch.setenv(LAYER_OPS_ENV, "torch")

    @pytest.fixture(scope="class")
    def conformance(self):
        return self.suite.build()

    def _broken_copy(self, conformance, mutate):
        model = self.suite.build_model(conformance.config)
        model.load_weights(self.suite.hf_weights(conformance.hf_model))
        with torch.no_grad():
            mutate(model)
        return model

    @pytest.mark.parametrize("mutate", [
        # k and v shards swapped in the fused projection of layer 1
        lambda m: m.model.layers[1].self_attn.qkv_proj.weight[64:].copy_(
            m.model.layers[1].self_attn.qkv_proj.weight[64:].roll(32, 0)),
        # gate and up swapped in layer 0
        lambda m: m.model.layers[0].mlp.gate_up_proj.weight.copy_(
            m.model.layers[0].mlp.gate_up_proj.weight.roll(112, 0)),
        # a slightly wrong final norm
        lambda m: m.model.norm.weight.mul_(1.01),
    ], ids=["kv-swapped", "gate-up-swapped", "norm-scaled"])
    def test_prefill_check_fails_on_broken_model(self, conformance, mutate):
        model = self._broken_copy(conformance, mutate)
        prompts = self.suite.prompts(conformance.config)
        with pytest.raises(AssertionError):
            self.suite.check_prefill(conformance.hf_model, model, prompts)

    def test_decode_check_fails_with_wrong_rope_theta(self, conformance):
        config = LlamaConfig(**TINY, rms_norm_eps=1e-5, architectures=["LlamaForCausalLM"],
                             rope_parameters={"rope_type": "default", "rope_theta": 20000.0})
        model = self.suite.build_model(config)
        model.load_weights(self.suite.hf_weights(conformance.hf_model))
        with pytest.raises(AssertionError):
            self.suite.check_decode(conformance.hf_model, model,
                                    self.suite.prompts(conformance.config))


def _without(suite_cls, **changes):
    """A config like ``suite_cls``'s HF config but with ``changes`` applied."""
    config = suite_cls().hf_config()
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize("suite_cls, changes", [
    (TestMistralSlidingWindow, {"sliding_window": None}),
    (TestQwen2SlidingWindowLayers, {"layer_types": ["full_attention"] * 2}),
    (TestLlamaTiedLlama3Rope, {"rope_parameters": {"rope_type": "default",
                                                   "rope_theta": 500000.0}}),
    (TestLlamaYarnRope, {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
    (TestLlamaBiasHeadDim, {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
], ids=["mistral-window", "qwen2-window", "llama3-rope", "yarn-rope", "linear-rope"])
def test_feature_matters(suite_cls, changes):
    """Ignoring the feature a suite class tests must make that suite fail."""
    suite = suite_cls()
    conformance = suite.build()
    model = suite.build_model(_without(suite_cls, **changes))
    model.load_weights(suite.hf_weights(conformance.hf_model))
    with pytest.raises(AssertionError):
        suite.check_decode(conformance.hf_model, model, suite.prompts(conformance.config))


def test_hf_llama_names_fill_the_fused_parameters(monkeypatch):
    """HF Llama's separate q/k/v (weights and biases) fill the shards of ``qkv_proj`` and
    gate/up those of ``gate_up_proj``; rotary buffers of older checkpoints and a tied model's
    ``lm_head.weight`` are known and skipped."""
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")  # read the loaded weights back as loaded
    suite = TestLlama()
    config = LlamaConfig(**TINY, attention_bias=True, tie_word_embeddings=True,
                         architectures=["LlamaForCausalLM"])
    state = dict(suite.build_hf_model(config).state_dict())
    assert "lm_head.weight" in state  # HF lists the tied head too
    state["model.layers.1.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    model = suite.build_model(config)
    assert model.load_weights(state.items()) == {name for name, _ in model.named_parameters()}
    q, kv = 4 * 16, 2 * 16  # rows of q and of k (heads x head_dim)
    qkv, attn = model.model.layers[1].self_attn.qkv_proj, "model.layers.1.self_attn"
    torch.testing.assert_close(qkv.weight[q:q + kv], state[f"{attn}.k_proj.weight"])
    torch.testing.assert_close(qkv.bias[q + kv:], state[f"{attn}.v_proj.bias"])
    gate_up = model.model.layers[0].mlp.gate_up_proj.weight
    torch.testing.assert_close(gate_up[112:], state["model.layers.0.mlp.up_proj.weight"])


def test_missing_hf_llama_tensor_is_named():
    suite = TestLlama()
    state = dict(suite.build_hf_model(suite.hf_config()).state_dict())
    del state["model.layers.1.mlp.gate_proj.weight"]
    with pytest.raises(ValueError, match=r"lacks 1 model weights: model\.layers\.1\.mlp\.gate_proj"):
        suite.build_model(suite.hf_config()).load_weights(state.items())


def test_unknown_architecture_name_error_is_clear():
    model = TestLlama().build_model(TestLlama().hf_config())
    with pytest.raises(KeyError, match="model.layers.7.self_attn.q_proj.weight"):
        model.load_weights([("model.layers.7.self_attn.q_proj.weight", torch.zeros(64, 64))])


def test_wrong_shape_error_names_the_tensor():
    model = TestLlama().build_model(TestLlama().hf_config())
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.k_proj.weight.*shape"):
        model.load_weights([("model.layers.0.self_attn.k_proj.weight", torch.zeros(64, 64))])


def test_tied_model_has_one_embedding_matrix():
    config = LlamaConfig(**TINY, tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    model = TestLlama().build_model(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_parameters_are_allocated_on_ctx_device_and_dtype():
    from octavo.attention.torch_backend import TorchAttentionBackend
    from octavo.modeling import ModelContext

    ctx = ModelContext(attention_backend=TorchAttentionBackend, dtype=torch.bfloat16)
    model = LlamaForCausalLM(LlamaForCausalLM.adapt_config(TestLlama().hf_config()), ctx)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert not any(p.requires_grad for p in model.parameters())
