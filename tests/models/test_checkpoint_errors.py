"""Wrong or truncated checkpoints fail to load, naming the tensor or architecture, and leave
nothing half-loaded. Also the name-map conveniences: checkpoints saved without the base-model
prefix, and tensors renamed between transformers versions."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from octavo_example_plugin.quantization import Int8WeightOnlyMethod, quantize_int8
from safetensors.torch import load_file, save_file
from transformers import (
    FalconConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    MptConfig,
    OPTConfig,
)

from octavo import LLM
from octavo.layers.linear import LinearBase
from octavo.model_loader import loader
from octavo.modeling import ModelContext
from octavo.testing.model_suite import ModelConformanceSuite, hf_logits
from octavo.testing.tiny_models import save_word_tokenizer
from octavo_models.weight_map import MissingWeightError

CONFIGS = {
    "gpt2": GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                       architectures=["GPT2LMHeadModel"]),
    "opt": OPTConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, ffn_dim=48,
                     num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=32,
                     architectures=["OPTForCausalLM"]),
    "gpt_neox": GPTNeoXConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=48,
                              max_position_embeddings=32, architectures=["GPTNeoXForCausalLM"]),
    "falcon": FalconConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, architectures=["FalconForCausalLM"]),
    "mpt": MptConfig(vocab_size=120, d_model=32, n_layers=2, n_heads=2, max_seq_len=32,
                     architectures=["MptForCausalLM"]),
    "gptj": GPTJConfig(vocab_size=120, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                       rotary_dim=8, architectures=["GPTJForCausalLM"]),
}
# a per-layer tensor of each family
LAYER_TENSOR = {
    "gpt2": "transformer.h.1.mlp.c_fc.weight",
    "opt": "model.decoder.layers.1.self_attn.k_proj.weight",
    "gpt_neox": "gpt_neox.layers.1.attention.query_key_value.weight",
    "falcon": "transformer.h.1.self_attention.query_key_value.weight",
    "mpt": "transformer.blocks.1.attn.Wqkv.weight",
    "gptj": "transformer.h.1.attn.k_proj.weight",  # one shard of the fused qkv_proj
}


class _Suite(ModelConformanceSuite):
    def __init__(self, family: str) -> None:
        self.family = family

    def hf_config(self):
        return CONFIGS[self.family]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family(request):
    suite = _Suite(request.param)
    config = suite.hf_config()
    hf_model = suite.build_hf_model(config)
    return request.param, suite, config, hf_model


def _state(hf_model):
    return {name: t.clone() for name, t in hf_model.state_dict().items()}


def test_missing_tensor_is_named(family):
    name, suite, config, hf_model = family
    state = _state(hf_model)
    del state[LAYER_TENSOR[name]]
    with pytest.raises(MissingWeightError, match=LAYER_TENSOR[name].replace(".", r"\.")):
        suite.build_model(config).load_weights(state.items())


def test_wrong_shape_is_named(family):
    name, suite, config, hf_model = family
    state = _state(hf_model)
    state[LAYER_TENSOR[name]] = state[LAYER_TENSOR[name]][:-1]
    with pytest.raises(ValueError, match=LAYER_TENSOR[name].replace(".", r"\.")):
        suite.build_model(config).load_weights(state.items())


def test_unexpected_tensor_is_named(family):
    name, suite, config, hf_model = family
    state = _state(hf_model)
    extra = LAYER_TENSOR[name].replace(".1.", ".7.")  # a layer the config does not have
    state[extra] = state[LAYER_TENSOR[name]]
    with pytest.raises(KeyError, match=extra.replace(".", r"\.")):
        suite.build_model(config).load_weights(state.items())


def _save(folder, hf_model, state=None):
    hf_model.config.save_pretrained(folder)
    state = _state(hf_model) if state is None else state
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    save_word_tokenizer(folder, num_words=50)


@pytest.fixture
def built_models(monkeypatch):
    """Weak references to every model the loader builds."""
    refs = []
    build = loader.build_model

    def tracked(*args, **kwargs):
        model = build(*args, **kwargs)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(loader, "build_model", tracked)
    return refs


def _assert_released(refs):
    gc.collect()
    assert refs and all(ref() is None for ref in refs), "a half-loaded model is still alive"


def test_llm_refuses_a_checkpoint_missing_a_tensor(family, tmp_path, built_models):
    name, _, _, hf_model = family
    state = _state(hf_model)
    del state[LAYER_TENSOR[name]]
    _save(tmp_path, hf_model, state)
    with pytest.raises(ValueError, match=LAYER_TENSOR[name].replace(".", r"\.")) as info:
        LLM(str(tmp_path), device="cpu")
    del info
    _assert_released(built_models)


def test_llm_refuses_a_truncated_file(tmp_path, built_models):
    hf_model = _Suite("gpt2").build_hf_model(CONFIGS["gpt2"])
    _save(tmp_path, hf_model)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors") as info:
        LLM(str(tmp_path), device="cpu")
    del info
    _assert_released(built_models)


def test_llm_refuses_an_unknown_architecture(tmp_path):
    hf_model = _Suite("gpt2").build_hf_model(CONFIGS["gpt2"])
    _save(tmp_path, hf_model)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["GPT3LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'GPT3LMHeadModel' is not supported"):
        LLM(str(tmp_path), device="cpu")


def test_gpt2_checkpoint_without_the_transformer_prefix_loads(tmp_path):
    """The original GPT-2 checkpoints name tensors ``h.0.attn.c_attn.weight``, ``wte.weight``."""
    suite = _Suite("gpt2")
    hf_model = suite.build_hf_model(CONFIGS["gpt2"])
    state = {k.removeprefix("transformer."): v for k, v in _state(hf_model).items()
             if k != "lm_head.weight"}
    _save(tmp_path, hf_model, state)
    assert "h.0.attn.c_attn.weight" in load_file(str(tmp_path / "model.safetensors"))
    llm = LLM(str(tmp_path), device="cpu", block_size=4, num_gpu_blocks_override=32)
    prompt = [5, 9, 13, 4]
    (out,) = llm.generate([prompt], _greedy(1))
    assert out.outputs[0].token_ids == [int(hf_logits(hf_model, prompt)[-1].argmax())]


def test_gpt_neox_checkpoint_of_transformers_4_naming_loads():
    """transformers 4 called the LM head ``embed_out``."""
    suite = _Suite("gpt_neox")
    config = suite.hf_config()
    hf_model = suite.build_hf_model(config)
    state = {("embed_out.weight" if k == "lm_head.weight" else k): v
             for k, v in _state(hf_model).items()}
    model = suite.build_model(config)
    model.load_weights(state.items())
    suite.check_prefill(hf_model, model, suite.prompts(config))


def _greedy(steps):
    from octavo import SamplingParams

    return SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)


def test_missing_lm_head_bias_is_named():
    suite = _Suite("gptj")
    hf_model = suite.build_hf_model(CONFIGS["gptj"])
    state = _state(hf_model)
    del state["lm_head.bias"]
    with pytest.raises(MissingWeightError, match=r"lm_head\.bias"):
        suite.build_model(CONFIGS["gptj"]).load_weights(state.items())


QUANTIZED_LINEARS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight",
                     "fc1.weight", "fc2.weight")


def _int8_model(suite, config):
    ctx = ModelContext(attention_backend=suite.attention_backend,
                       quantization=Int8WeightOnlyMethod())
    cls = type(suite.build_model(config))
    return cls(cls.adapt_config(config), ctx).eval()


def test_quantized_linears_load_through_the_same_rules():
    """A quantization method's own tensors (the example plugin's int8 ``qweight`` and
    ``scales``) reach its parameters through the family's name map; the model then matches
    HF running the dequantized weights."""
    suite = _Suite("opt")
    config = suite.hf_config()
    hf_model = suite.build_hf_model(config)
    checkpoint = {}
    for name, tensor in _state(hf_model).items():
        if not name.endswith(QUANTIZED_LINEARS):
            checkpoint[name] = tensor
            continue
        qweight, scales = quantize_int8(tensor)
        checkpoint[name.replace(".weight", ".qweight")] = qweight
        checkpoint[name.replace(".weight", ".scales")] = scales
        hf_model.get_parameter(name).data.copy_(qweight.float() * scales[:, None])
    model = _int8_model(suite, config)
    model.load_weights(checkpoint.items())
    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert len(linears) == 8 and {m.quant_method.name for m in linears} == {"example_int8"}
    suite.check_prefill(hf_model, model, suite.prompts(config))


@pytest.mark.parametrize("family, tensor", [
    ("gpt2", "transformer.h.0.attn.c_attn.qweight"),
    ("gpt_neox", "gpt_neox.layers.0.attention.query_key_value.qweight"),
])
def test_quantized_tensors_are_refused_where_the_layout_is_converted(family, tensor):
    suite = _Suite(family)
    model = _int8_model(suite, suite.hf_config())
    with pytest.raises(ValueError, match=tensor.replace(".", r"\.") + ".*only dense"):
        model.load_weights([(tensor, torch.zeros(1, dtype=torch.int8))])
