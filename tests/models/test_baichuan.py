"""Baichuan and Baichuan 2 (remote-code ``BaiChuanForCausalLM`` / ``BaichuanForCausalLM``)
against HF transformers.

transformers has no Baichuan class. The reference is HF's Llama with the same dims, and the
checkpoint is its weights with q/k/v packed into ``W_pack``, next to a config.json in
Baichuan's own fields (the suite's engine test loads that folder with ``octavo.LLM``):

- Baichuan-7B and Baichuan2-7B use RoPE: HF Llama is exactly their math.
- Baichuan 2's ``NormHead`` L2-normalizes the ``lm_head`` rows before use: the reference
  Llama's head rows are unit-norm, and the checkpoint stores them rescaled by random factors
  (as a trained NormHead weight is), so only a model that normalizes them can match.
- Baichuan-13B uses ALiBi, which transformers has in no Llama-like model (BLOOM and MPT differ
  in norms, MLP and qkv layout). The reference is HF Llama with its rotary turned into the
  identity (cos = 1, sin = 0) and its attention replaced, through transformers' public
  ``AttentionInterface``, by Baichuan-13B's: ``softmax(q k^T / sqrt(d) + slope_h * j)`` over
  causal keys ``j``, with the slopes from Baichuan's own recursive formula, written here
  independently of Octavo's.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, LlamaConfig, PretrainedConfig

from octavo.layers import alibi_slopes
from octavo.model_loader.loader import load_hf_config, resolve_model_source
from octavo.testing.model_suite import ModelConformanceSuite
from octavo_models.baichuan import (
    BAICHUAN2_VOCAB_SIZE,
    BAICHUAN_LAYOUT,
    BaiChuanForCausalLM,
    BaichuanForCausalLM,
)

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
            rms_norm_eps=1e-6, architectures=["LlamaForCausalLM"])


def baichuan_config_json(native, architecture: str, rope: bool) -> dict:
    """The config.json of a Baichuan checkpoint of ``native``'s dims; ALiBi checkpoints (13B)
    carry ``model_max_length`` only, RoPE ones ``max_position_embeddings``."""
    raw = {"architectures": [architecture], "model_type": "baichuan",
           "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                        "AutoModelForCausalLM": f"modeling_baichuan.{architecture}"},
           "vocab_size": native.vocab_size, "hidden_size": native.hidden_size,
           "intermediate_size": native.intermediate_size,
           "num_hidden_layers": native.num_hidden_layers,
           "num_attention_heads": native.num_attention_heads, "hidden_act": "silu",
           "rms_norm_eps": native.rms_norm_eps, "model_max_length": 4096,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
           "pad_token_id": 0}
    if rope:
        raw["max_position_embeddings"] = native.max_position_embeddings
    return raw


def baichuan_checkpoint(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A native Llama state dict with each layer's q/k/v packed into ``W_pack``."""
    out = dict(state)
    for i in range(num_layers):
        attn = f"model.layers.{i}.self_attn."
        out[attn + "W_pack.weight"] = torch.cat([out.pop(f"{attn}{p}_proj.weight") for p in "qkv"])
    return out


def baichuan_interleaved_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes as Baichuan's ``_get_interleave`` computes them (recursive form)."""
    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_2(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(closest) + baichuan_interleaved_slopes(2 * closest)[0::2][:num_heads - closest]


def baichuan13b_attention(module, query, key, value, attention_mask, scaling, dropout=0.0,
                          **kwargs):
    """Baichuan-13B's attention for HF Llama: ``scores / sqrt(d) + slope_h * j``, causal.

    ``query: [B, H, q, D]``, ``key``/``value``: ``[B, H, k, D]`` (Baichuan is multi-head).
    """
    q_len, k_len = query.shape[-2], key.shape[-2]
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, H, q, k]
    slopes = torch.tensor(baichuan_interleaved_slopes(query.shape[1]), dtype=scores.dtype)
    k_pos = torch.arange(k_len)
    q_pos = torch.arange(k_len - q_len, k_len)
    scores = scores + slopes[:, None, None] * k_pos
    scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    if attention_mask is not None:  # padding, never used by these tests
        scores = (scores.masked_fill(~attention_mask, float("-inf"))
                  if attention_mask.dtype == torch.bool else scores + attention_mask)
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register("baichuan13b_alibi", baichuan13b_attention)


class BaichuanSuite(ModelConformanceSuite):
    """Octavo's Baichuan on the packed checkpoint vs the reference on HF."""

    architectures = ("BaichuanForCausalLM",)
    rope = True

    def remote_config(self, native) -> dict:
        return baichuan_config_json(native, self.architectures[0], self.rope)

    def build_model(self, config):
        return super().build_model(PretrainedConfig(**self.remote_config(config)))

    def hf_weights(self, hf_model):
        return baichuan_checkpoint(hf_model.state_dict(),
                                   hf_model.config.num_hidden_layers).items()

    def save_checkpoint(self, folder, conformance):
        """The engine test loads Baichuan's config.json without remote code."""
        super().save_checkpoint(folder, conformance)
        (folder / "config.json").write_text(json.dumps(self.remote_config(conformance.config)))


class TestBaichuan7B(BaichuanSuite):
    architectures = ("BaiChuanForCausalLM",)

    def hf_config(self):
        return LlamaConfig(**TINY)


class TestBaichuan2NormHead(BaichuanSuite):
    """Baichuan2-7B: RoPE and NormHead (its 125696-token vocabulary marks Baichuan 2)."""

    def hf_config(self):
        return LlamaConfig(**dict(TINY, vocab_size=BAICHUAN2_VOCAB_SIZE, hidden_size=32,
                                  num_hidden_layers=1))

    def build_hf_model(self, config):
        hf = super().build_hf_model(config)
        with torch.no_grad():
            hf.lm_head.weight.copy_(F.normalize(hf.lm_head.weight, dim=-1))
        return hf

    def hf_weights(self, hf_model):
        checkpoint = dict(super().hf_weights(hf_model))
        gen = torch.Generator().manual_seed(5)
        head = checkpoint["lm_head.weight"]
        checkpoint["lm_head.weight"] = head * (0.5 + 2 * torch.rand(head.shape[0], 1,
                                                                    generator=gen))
        return checkpoint.items()


class TestBaichuan13BAlibi(BaichuanSuite):
    """Baichuan-13B: ALiBi (config.json without max_position_embeddings), 6 heads so the
    slopes' non-power-of-two branch is used."""

    rope = False
    prompt_lens = (9, 17, 4)

    def hf_config(self):
        return LlamaConfig(**dict(TINY, hidden_size=96, num_attention_heads=6,
                                  num_key_value_heads=6))

    def build_hf_model(self, config):
        hf = super().build_hf_model(config)
        hf.set_attn_implementation("baichuan13b_alibi")
        head_dim = config.hidden_size // config.num_attention_heads

        def no_rotation(x, position_ids):
            shape = (*position_ids.shape, head_dim)
            return (torch.ones(shape, dtype=x.dtype, device=x.device),
                    torch.zeros(shape, dtype=x.dtype, device=x.device))

        hf.model.rotary_emb.forward = no_rotation
        return hf


@pytest.fixture(scope="module")
def alibi():
    suite = TestBaichuan13BAlibi()
    return suite, suite.build()


@pytest.mark.parametrize("num_heads", [1, 2, 6, 8, 12, 40, 64])
def test_alibi_slopes_equal_baichuans(num_heads):
    expected = torch.tensor(baichuan_interleaved_slopes(num_heads))
    torch.testing.assert_close(alibi_slopes(num_heads), expected)


def test_alibi_model_run_with_rope_fails_the_suite(alibi):
    suite, conf = alibi
    raw = suite.remote_config(conf.config)
    raw["max_position_embeddings"] = 128  # makes it a RoPE checkpoint
    model = ModelConformanceSuite.build_model(suite, PretrainedConfig(**raw))
    model.load_weights(suite.hf_weights(conf.hf_model))
    with pytest.raises(AssertionError):
        suite.check_prefill(conf.hf_model, model, suite.prompts(conf.config))


def test_norm_head_matters():
    """Loading Baichuan 2's raw head rows without normalizing them must fail the suite."""
    suite = TestBaichuan2NormHead()
    conf = suite.build()
    model = suite.build_model(conf.config)
    model.weight_rules = lambda: BAICHUAN_LAYOUT.rules(tied=False)  # no NormHead transform
    model.load_weights(suite.hf_weights(conf.hf_model))
    with pytest.raises(AssertionError):
        suite.check_prefill(conf.hf_model, model, suite.prompts(conf.config))


def test_missing_w_pack_is_named(alibi):
    suite, conf = alibi
    checkpoint = dict(suite.hf_weights(conf.hf_model))
    del checkpoint["model.layers.1.self_attn.W_pack.weight"]
    with pytest.raises(ValueError, match=r"lacks 1 model weights: model\.layers\.1\.self_attn\.W_pack\.weight$"):
        suite.build_model(conf.config).load_weights(checkpoint.items())


def test_wrong_w_pack_shape_is_named(alibi):
    suite, conf = alibi
    checkpoint = dict(suite.hf_weights(conf.hf_model))
    w_pack = "model.layers.0.self_attn.W_pack.weight"
    checkpoint[w_pack] = checkpoint[w_pack][:, :-1]
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.W_pack\.weight'?:.*shape"):
        suite.build_model(conf.config).load_weights(checkpoint.items())


def test_unpacked_q_k_v_are_not_baichuan_tensors(alibi):
    """A Llama-layout state dict (separate q/k/v) is not a Baichuan checkpoint."""
    suite, conf = alibi
    with pytest.raises(KeyError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight"):
        suite.build_model(conf.config).load_weights(conf.hf_model.state_dict().items())


def test_position_embedding_follows_the_config_fields():
    native = LlamaConfig(**TINY)
    rope = PretrainedConfig(**baichuan_config_json(native, "BaichuanForCausalLM", rope=True))
    alibi = PretrainedConfig(**baichuan_config_json(native, "BaichuanForCausalLM", rope=False))
    assert BaichuanForCausalLM.adapt_config(rope).position_embedding == "rope"
    adapted = BaichuanForCausalLM.adapt_config(alibi)
    assert adapted.position_embedding == "alibi"
    assert adapted.max_position_embeddings == 4096  # model_max_length
    assert BaiChuanForCausalLM.adapt_config(alibi).position_embedding == "rope"  # Baichuan-7B


def test_loader_adapts_the_config_once(alibi, tmp_path, load_adapting_once):
    """The loader adapts config.json once, and the cache spec and the model get that result.
    Adapting is not idempotent here: the adapted config has ``max_position_embeddings``, which
    a second adaptation would read as a RoPE checkpoint."""
    suite, conf = alibi
    suite.save_checkpoint(tmp_path, conf)
    loaded, adapted = load_adapting_once(BaichuanForCausalLM, tmp_path)
    assert adapted.position_embedding == "alibi" and loaded.model.model.rotary_emb is None


def test_loader_reads_a_remote_code_config_without_its_code(tmp_path):
    raw = baichuan_config_json(LlamaConfig(**TINY), "BaichuanForCausalLM", rope=False)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = load_hf_config(resolve_model_source(str(tmp_path)))
    assert config.architectures == ["BaichuanForCausalLM"]
    assert config.model_type == "baichuan" and config.model_max_length == 4096


def test_loader_still_refuses_an_unregistered_remote_code_architecture(tmp_path):
    raw = {"architectures": ["NoSuchForCausalLM"], "model_type": "no_such_model",
           "hidden_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="no_such_model"):
        load_hf_config(resolve_model_source(str(tmp_path)))


def test_each_tensor_parallel_rank_gets_its_heads_slopes():
    from octavo.attention.torch_backend import TorchAttentionBackend
    from octavo.modeling import ModelContext, ParallelConfig

    raw = baichuan_config_json(TestBaichuan13BAlibi().hf_config(), "BaichuanForCausalLM",
                               rope=False)
    slopes = []
    for rank in range(2):
        ctx = ModelContext(attention_backend=TorchAttentionBackend,
                           parallel=ParallelConfig(tensor_parallel_size=2, rank=rank))
        config = BaichuanForCausalLM.adapt_config(PretrainedConfig(**raw))
        model = BaichuanForCausalLM(config, ctx)
        assert model.model.rotary_emb is None
        slopes.append(model.model.layers[0].self_attn.attn.impl.alibi_slopes)
    torch.testing.assert_close(torch.cat(slopes), torch.tensor(baichuan_interleaved_slopes(6)))
