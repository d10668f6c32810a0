"""GPT-J against HF transformers, via the conformance suite."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import GPTJConfig

from octavo.testing.model_suite import LongPromptSuite, ModelConformanceSuite


class TestGPTJ(ModelConformanceSuite):
    """Interleaved partial rotary (8 of 16 dims), parallel attention + MLP, LM head bias."""

    def hf_config(self):
        return GPTJConfig(vocab_size=200, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                          rotary_dim=8, bos_token_id=1, eos_token_id=2,
                          architectures=["GPTJForCausalLM"])


@pytest.mark.slow
class TestGPTJLarger(LongPromptSuite):
    """Head size 64, four layers, prompts past a hundred tokens."""

    def hf_config(self):
        return GPTJConfig(vocab_size=1000, n_embd=256, n_layer=4, n_head=4, n_positions=512,
                          rotary_dim=32, architectures=["GPTJForCausalLM"])


@pytest.mark.parametrize("fields", [{"is_neox_style": True}, {"rotary_dim": 16}],
                         ids=["interleaved-rotary", "partial-rotary"])
def test_feature_matters(assert_feature_matters, fields):
    assert_feature_matters(TestGPTJ, lambda spec: {
        "rope": dataclasses.replace(spec.rope, **fields)})
