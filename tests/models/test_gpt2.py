"""GPT-2 against HF transformers, via the conformance suite."""

from __future__ import annotations

import pytest
from transformers import GPT2Config

from octavo.testing.model_suite import LongPromptSuite, ModelConformanceSuite

TINY = dict(vocab_size=200, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
            eos_token_id=2)


class TestGPT2(ModelConformanceSuite):
    def hf_config(self):
        return GPT2Config(**TINY, architectures=["GPT2LMHeadModel"])


class TestGPT2Variants(ModelConformanceSuite):
    """Untied LM head, n_inner, exact GELU, attention scaled by the inverse layer index."""

    engine_check = False

    def hf_config(self):
        return GPT2Config(**TINY, n_inner=96, activation_function="gelu",
                          scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False,
                          architectures=["GPT2LMHeadModel"])


@pytest.mark.slow
class TestGPT2Larger(LongPromptSuite):
    """Head size 64, four layers, prompts past a hundred tokens."""

    def hf_config(self):
        return GPT2Config(vocab_size=1000, n_embd=256, n_layer=4, n_head=4, n_positions=512,
                          architectures=["GPT2LMHeadModel"])


def test_feature_matters(assert_feature_matters):
    assert_feature_matters(TestGPT2Variants, lambda spec: {"scale_by_inverse_layer": False})
