"""GPT-NeoX (Pythia) against HF transformers, via the conformance suite."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import GPTNeoXConfig

from octavo.testing.model_suite import LongPromptSuite, ModelConformanceSuite

TINY = dict(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=96, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)


class TestGPTNeoX(ModelConformanceSuite):
    """Pythia's layout: parallel residual with two norms, rotary over a quarter of each head."""

    def hf_config(self):
        return GPTNeoXConfig(**TINY, rotary_pct=0.25, architectures=["GPTNeoXForCausalLM"])


class TestGPTNeoXSequential(ModelConformanceSuite):
    """use_parallel_residual=False, full rotary, tied embeddings, no attention bias."""

    engine_check = False

    def hf_config(self):
        return GPTNeoXConfig(**TINY, rotary_pct=1.0, use_parallel_residual=False,
                             tie_word_embeddings=True, attention_bias=False,
                             architectures=["GPTNeoXForCausalLM"])


@pytest.mark.slow
class TestGPTNeoXLarger(LongPromptSuite):
    """Head size 64, four layers, prompts past a hundred tokens."""

    def hf_config(self):
        return GPTNeoXConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4,
                             num_attention_heads=4, intermediate_size=512,
                             max_position_embeddings=512, architectures=["GPTNeoXForCausalLM"])


@pytest.mark.parametrize("changes", [
    lambda spec: {"rope": dataclasses.replace(spec.rope, rotary_dim=spec.head_dim)},
    lambda spec: {"parallel_residual": False},
], ids=["partial-rotary", "parallel-residual"])
def test_feature_matters(assert_feature_matters, changes):
    assert_feature_matters(TestGPTNeoX, changes)
