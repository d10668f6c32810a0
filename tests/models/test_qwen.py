"""QWen first generation (remote-code ``QWenLMHeadModel``) against HF transformers.

transformers has no QWen class, so the reference is a native model with the same math and the
checkpoint is its weights renamed and fused into QWen's layout (``c_attn`` = [q | k | v],
``w2`` = gate, ``w1`` = up), with a config.json in QWen's own field names (the suite's engine
test loads that folder with ``octavo.LLM``):

- ``no_bias: true`` (every published QWen): Qwen2, which has q/k/v biases only;
- ``no_bias: false``: Llama with ``attention_bias`` and ``mlp_bias``.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

from octavo.testing.model_suite import ModelConformanceSuite
from octavo_models.qwen import QWenLMHeadModel, qwen_llama_fields

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
            rope_parameters={"rope_type": "default", "rope_theta": 50000.0})


def qwen_config_json(native) -> dict:
    """The config.json a QWen checkpoint of ``native``'s dims carries."""
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "model_type": "qwen", "vocab_size": native.vocab_size,
        "hidden_size": native.hidden_size, "intermediate_size": 2 * native.intermediate_size,
        "num_hidden_layers": native.num_hidden_layers,
        "num_attention_heads": native.num_attention_heads,
        "kv_channels": native.hidden_size // native.num_attention_heads,
        "layer_norm_epsilon": native.rms_norm_eps,
        "rotary_emb_base": native.rope_parameters["rope_theta"], "rotary_pct": 1.0,
        "seq_length": native.max_position_embeddings, "max_position_embeddings": 4096,
        "use_dynamic_ntk": True, "use_logn_attn": True,
        "no_bias": not getattr(native, "mlp_bias", False), "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2,
    }


def qwen_checkpoint(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A native Llama-family state dict in QWen's tensor names and fused layout."""
    state = dict(state)
    out = {"transformer.wte.weight": state.pop("model.embed_tokens.weight"),
           "transformer.ln_f.weight": state.pop("model.norm.weight"),
           "lm_head.weight": state.pop("lm_head.weight")}
    for i in range(num_layers):
        src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            qkv = [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.c_attn.{kind}"] = torch.cat(qkv)
        renames = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2",
                   "self_attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.w1",
                   "mlp.gate_proj": "mlp.w2", "mlp.down_proj": "mlp.c_proj"}
        for old, new in renames.items():
            for kind in ("weight", "bias"):
                if f"{src}{old}.{kind}" in state:
                    out[f"{dst}{new}.{kind}"] = state.pop(f"{src}{old}.{kind}")
    assert not state, f"tensors left unconverted: {sorted(state)}"
    return out


class QWenSuite(ModelConformanceSuite):
    """Octavo's QWen on the converted checkpoint vs the native model on HF."""

    architectures = ("QWenLMHeadModel",)

    def build_model(self, config):
        return super().build_model(PretrainedConfig(**qwen_config_json(config)))

    def hf_weights(self, hf_model):
        return qwen_checkpoint(hf_model.state_dict(), hf_model.config.num_hidden_layers).items()

    def save_checkpoint(self, folder, conformance):
        """The engine test loads QWen's config.json (``model_type: qwen``, an ``auto_map``)
        without remote code."""
        super().save_checkpoint(folder, conformance)
        (folder / "config.json").write_text(json.dumps(qwen_config_json(conformance.config)))


class TestQWen(QWenSuite):
    """``no_bias``: biases on c_attn only (Qwen2's layout)."""

    def hf_config(self):
        return Qwen2Config(**TINY, rms_norm_eps=1e-6, architectures=["Qwen2ForCausalLM"])


class TestQWenWithBiases(QWenSuite):
    """``no_bias: false``: biases on c_attn, c_proj, w1, w2 and the MLP's c_proj too."""

    def hf_config(self):
        return LlamaConfig(**TINY, attention_bias=True, mlp_bias=True,
                           architectures=["LlamaForCausalLM"])


@pytest.fixture(scope="module")
def qwen():
    suite = TestQWen()
    return suite, suite.build()


def test_swapped_w1_w2_fails_the_suite(qwen):
    """The SwiGLU order is ``c_proj(w1(x) * silu(w2(x)))``: w1 is up, w2 the gate."""
    suite, conf = qwen
    checkpoint = dict(suite.hf_weights(conf.hf_model))
    for i in range(conf.config.num_hidden_layers):
        w1, w2 = f"transformer.h.{i}.mlp.w1.weight", f"transformer.h.{i}.mlp.w2.weight"
        checkpoint[w1], checkpoint[w2] = checkpoint[w2], checkpoint[w1]
    model = suite.build_model(conf.config)
    model.load_weights(checkpoint.items())
    with pytest.raises(AssertionError):
        suite.check_prefill(conf.hf_model, model, suite.prompts(conf.config))


def test_missing_tensor_is_named(qwen):
    suite, conf = qwen
    checkpoint = dict(suite.hf_weights(conf.hf_model))
    del checkpoint["transformer.h.1.attn.c_attn.bias"]
    with pytest.raises(ValueError, match=r"lacks 1 model weights: transformer\.h\.1\.attn\.c_attn\.bias$"):
        suite.build_model(conf.config).load_weights(checkpoint.items())


def test_wrong_shape_is_named(qwen):
    suite, conf = qwen
    checkpoint = dict(suite.hf_weights(conf.hf_model))
    c_attn = "transformer.h.0.attn.c_attn.weight"
    checkpoint[c_attn] = checkpoint[c_attn][:-4]  # a truncated fused [q | k | v]
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn\.weight'?:.*shape"):
        suite.build_model(conf.config).load_weights(checkpoint.items())


def test_config_fields_map_onto_the_llama_block():
    config = PretrainedConfig(**qwen_config_json(TestQWen().hf_config()))
    fields = qwen_llama_fields(config)
    assert fields["intermediate_size"] == 112 and fields["rms_norm_eps"] == 1e-6
    assert fields["rope_parameters"]["rope_theta"] == 50000.0
    assert (fields["qkv_bias"], fields["attention_bias"], fields["mlp_bias"]) == (True,) + (False,) * 2
    # dynamic NTK and log-n scaling change the model past seq_length: the context stops there
    assert fields["max_position_embeddings"] == 128
    config.use_dynamic_ntk = config.use_logn_attn = False
    assert qwen_llama_fields(config)["max_position_embeddings"] == 4096
    adapted = QWenLMHeadModel.adapt_config(config)
    assert adapted.intermediate_size == 112 and config.intermediate_size == 224
    assert QWenLMHeadModel.kv_cache_spec(adapted).num_kv_heads == 4


def test_loader_adapts_the_config_once(qwen, tmp_path, load_adapting_once):
    """The loader adapts config.json once; the cache spec and the model get that result."""
    suite, conf = qwen
    suite.save_checkpoint(tmp_path, conf)
    loaded, adapted = load_adapting_once(QWenLMHeadModel, tmp_path)
    assert adapted.intermediate_size == 112 and loaded.kv_spec.num_kv_heads == 4


@pytest.mark.parametrize("field, value, message", [
    ("kv_channels", 8, "kv_channels"), ("rotary_pct", 0.5, "rotary_pct")])
def test_unsupported_config_is_refused(field, value, message):
    raw = qwen_config_json(TestQWen().hf_config())
    raw[field] = value
    with pytest.raises(ValueError, match=message):
        QWenLMHeadModel.adapt_config(PretrainedConfig(**raw))
