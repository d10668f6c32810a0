"""OPT against HF transformers, via the conformance suite."""

from __future__ import annotations

import pytest
from transformers import OPTConfig

from octavo.testing.model_suite import LongPromptSuite, ModelConformanceSuite

TINY = dict(vocab_size=200, hidden_size=64, num_hidden_layers=2, ffn_dim=96,
            num_attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)


class TestOPT(ModelConformanceSuite):
    """OPT-125m's layout: pre-norm, learned positions offset by 2, tied LM head."""

    def hf_config(self):
        return OPTConfig(**TINY, word_embed_proj_dim=64, architectures=["OPTForCausalLM"])


class TestOPTPostNormProjected(ModelConformanceSuite):
    """OPT-350m's layout: post-norm blocks, no final norm, project_in/out of a narrower
    embedding."""

    def hf_config(self):
        return OPTConfig(**TINY, word_embed_proj_dim=32, do_layer_norm_before=False,
                         architectures=["OPTForCausalLM"])


@pytest.mark.slow
class TestOPTLarger(LongPromptSuite):
    """Head size 64, four layers, prompts past a hundred tokens."""

    def hf_config(self):
        return OPTConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, ffn_dim=512,
                         num_attention_heads=4, max_position_embeddings=512,
                         word_embed_proj_dim=256, architectures=["OPTForCausalLM"])


def test_feature_matters(assert_feature_matters):
    assert_feature_matters(TestOPT, lambda spec: {"activation": "gelu"})
