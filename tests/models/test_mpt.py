"""MPT against HF transformers, via the conformance suite: ALiBi through the attention backend."""

from __future__ import annotations

import pytest
import torch
from transformers import MptConfig
from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

from octavo.testing.model_suite import LongPromptSuite, ModelConformanceSuite
from octavo_models.mpt import MptForCausalLM, mpt_alibi_slopes

TINY = dict(vocab_size=200, n_layers=2, max_seq_len=64, bos_token_id=1, eos_token_id=2)


class TestMpt(ModelConformanceSuite):
    def hf_config(self):
        return MptConfig(**TINY, d_model=64, n_heads=4, architectures=["MptForCausalLM"])


class TestMptClipSixHeads(ModelConformanceSuite):
    """A head count that is not a power of two (MPT's own slope order) and clip_qkv."""

    engine_check = False
    prompt_lens = (7, 21, 3)

    def hf_config(self):
        return MptConfig(**TINY, d_model=48, n_heads=6, attn_config={"clip_qkv": 0.3},
                         architectures=["MptForCausalLM"])


@pytest.mark.slow
class TestMptLarger(LongPromptSuite):
    """Head size 64, four layers, prompts past a hundred tokens."""

    def hf_config(self):
        return MptConfig(vocab_size=1000, d_model=256, n_layers=4, n_heads=4, max_seq_len=512,
                         architectures=["MptForCausalLM"])


@pytest.mark.parametrize("num_heads", [1, 4, 6, 12, 32])
def test_slopes_equal_hf(num_heads):
    length = 5
    hf = build_mpt_alibi_tensor(num_heads, length)  # [heads, 1, length]: slope * (k - L + 1)
    expected = -hf[:, 0, 0] / (length - 1)
    torch.testing.assert_close(torch.tensor(mpt_alibi_slopes(num_heads)), expected)


@pytest.mark.parametrize("suite_cls, change", [
    (TestMptClipSixHeads, {"clip_qkv": None}),
    (TestMptClipSixHeads, {"alibi_bias_max": 4}),
], ids=["clip_qkv", "alibi-slopes"])
def test_feature_matters(suite_cls, change):
    """Ignoring the feature a suite class tests must make that suite fail."""
    suite = suite_cls()
    conformance = suite.build()
    config = suite.hf_config()
    for key, value in change.items():
        setattr(config.attn_config, key, value)
    model = suite.build_model(config)
    model.load_weights(suite.hf_weights(conformance.hf_model))
    with pytest.raises(AssertionError):
        suite.check_prefill(conformance.hf_model, model, suite.prompts(conformance.config))


def test_unsupported_layouts_are_refused():
    with pytest.raises(ValueError, match="ALiBi"):
        MptForCausalLM.decoder_spec(MptConfig(**TINY, attn_config={"alibi": False}))
