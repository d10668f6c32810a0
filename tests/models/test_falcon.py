"""Falcon against HF transformers, via the conformance suite: its three fused-QKV layouts."""

from __future__ import annotations

import pytest
from transformers import FalconConfig

from octavo.testing.model_suite import LongPromptSuite, ModelConformanceSuite
from octavo_models.falcon import FalconForCausalLM

TINY = dict(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, bos_token_id=1, eos_token_id=2)


class TestFalconMultiQuery(ModelConformanceSuite):
    """Falcon-7B's layout: one KV head, parallel attention + MLP over one norm, no bias."""

    def hf_config(self):
        return FalconConfig(**TINY, multi_query=True, parallel_attn=True,
                            architectures=["FalconForCausalLM"])


class TestFalconNewArchitecture(ModelConformanceSuite):
    """new_decoder_architecture (Falcon-40B): grouped QKV with 2 KV heads, ln_attn and ln_mlp."""

    def hf_config(self):
        return FalconConfig(**TINY, new_decoder_architecture=True, num_kv_heads=2, bias=True,
                            architectures=["FalconForCausalLM"])


class TestFalconNewArchitectureOneNorm(ModelConformanceSuite):
    """new_decoder_architecture with num_ln_in_parallel_attn=1 (Falcon 2), untied LM head."""

    engine_check = False

    def hf_config(self):
        return FalconConfig(**TINY, new_decoder_architecture=True, num_kv_heads=1,
                            num_ln_in_parallel_attn=1, tie_word_embeddings=False,
                            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                            architectures=["FalconForCausalLM"])


class TestFalconSequential(ModelConformanceSuite):
    """Per-head [q, k, v] interleaving, sequential blocks with two norms, biases."""

    engine_check = False

    def hf_config(self):
        return FalconConfig(**TINY, multi_query=False, parallel_attn=False, bias=True,
                            architectures=["FalconForCausalLM"])


@pytest.mark.slow
class TestFalconLarger(LongPromptSuite):
    """Head size 64, four layers, prompts past a hundred tokens."""

    def hf_config(self):
        return FalconConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4,
                            num_attention_heads=4, new_decoder_architecture=True, num_kv_heads=2,
                            max_position_embeddings=512, architectures=["FalconForCausalLM"])


def test_alibi_checkpoints_are_refused_with_a_reason():
    config = FalconConfig(**TINY, alibi=True, architectures=["FalconForCausalLM"])
    with pytest.raises(ValueError, match="alibi"):
        FalconForCausalLM.decoder_spec(config)


@pytest.mark.parametrize("suite_cls, changes", [
    (TestFalconNewArchitectureOneNorm, lambda spec: {"rope": None}),
    (TestFalconSequential, lambda spec: {"parallel_residual": True}),
], ids=["rotary", "sequential-blocks"])
def test_feature_matters(assert_feature_matters, suite_cls, changes):
    assert_feature_matters(suite_cls, changes)
