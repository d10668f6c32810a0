"""Weight formats against HF: every yielded tensor equals the HF model's state_dict entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config
from transformers import Qwen2ForCausalLM as HFQwen2ForCausalLM

from octavo.testing.weight_format_suite import WeightFormatSuite
from octavo_models.weights import GGUFFormat, SafetensorsFormat, TorchBinFormat
from octavo_models.weights.gguf_format import GGUF_ARCHS, hf_tensor_name

TINY = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            tie_word_embeddings=False)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


def collect(fmt, paths, config) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in paths:
        for name, tensor in fmt.iter_weights(path, config):
            assert name not in out, f"{name} yielded twice"
            out[name] = tensor
    return out


def assert_state_dict_equal(got: dict[str, torch.Tensor], model: torch.nn.Module,
                            atol: float = 0.0) -> None:
    expected = model.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=atol, rtol=0, msg=name)


def test_safetensors_matches_hf_state_dict(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path)
    got = collect(SafetensorsFormat(), [tmp_path / "model.safetensors"], model.config)
    assert_state_dict_equal(got, model)


def test_sharded_safetensors_shards_together_match(tmp_path):
    model = tiny_llama(1)
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    got = collect(SafetensorsFormat(), shards, model.config)
    assert_state_dict_equal(got, model)


def test_torch_bin_matches_hf_state_dict(tmp_path):
    model = tiny_llama(2)
    # transformers 5 only writes safetensors; this is the file older transformers wrote.
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    got = collect(TorchBinFormat(), [tmp_path / "pytorch_model.bin"], model.config)
    assert_state_dict_equal(got, model)


def test_torch_bin_rejects_non_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "x.bin")
    with pytest.raises(ValueError, match="state dict"):
        list(TorchBinFormat().iter_weights(tmp_path / "x.bin", None))


# -- GGUF -----------------------------------------------------------------------------------
def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter: per head, rows (2, dim) -> (dim, 2) for its rotary layout."""
    return (weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_gguf(model: torch.nn.Module, arch: str, path, permute_qk: bool) -> None:
    """Write ``model`` as llama.cpp would: GGUF names, permuted Q/K, Q8_0 for the LM head."""
    write_gguf_tensors(model.config, model.state_dict(), arch, path, permute_qk)


def write_gguf_tensors(cfg, tensors: dict[str, torch.Tensor], arch: str, path,
                       permute_qk: bool) -> None:
    """:func:`write_gguf` for HF-named ``tensors`` and their config."""
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(cfg.vocab_size)
    hf_to_gguf = {}
    for gguf_name, hf_name in GGUF_ARCHS[arch].names.items():
        if hf_name is not None:
            hf_to_gguf[hf_name] = gguf_name
    for hf_name, tensor in tensors.items():
        base, _, suffix = hf_name.rpartition(".")
        parts = base.split(".")
        if base.startswith("model.layers."):
            key = hf_to_gguf[".".join(parts[:2] + ["{bid}"] + parts[3:])].format(bid=parts[2])
        else:
            key = hf_to_gguf[base]
        data = tensor.numpy()
        if permute_qk and base.endswith("q_proj"):
            data = llama_cpp_permute(data, cfg.num_attention_heads)
        elif permute_qk and base.endswith("k_proj"):
            data = llama_cpp_permute(data, cfg.num_key_value_heads)
        if hf_name == "lm_head.weight":
            writer.add_tensor(f"{key}.{suffix}", quantize(data, GGMLQuantizationType.Q8_0),
                              raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(f"{key}.{suffix}", np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_matches_hf_gguf_loading(tmp_path, arch):
    if arch == "llama":
        model, permute = tiny_llama(3), True
    else:  # Qwen2: q/k/v biases, no Q/K permutation in llama.cpp
        torch.manual_seed(4)
        model, permute = HFQwen2ForCausalLM(Qwen2Config(**TINY)).eval(), False
    write_gguf(model, arch, tmp_path / "tiny.gguf", permute)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    got = collect(GGUFFormat(), [tmp_path / "tiny.gguf"], reference.config)
    assert_state_dict_equal(got, reference)
    # ... and F32 tensors round-trip exactly to the original model (Q8_0 lm_head nearly).
    original = model.state_dict()
    for name, tensor in got.items():
        atol = 0.02 if name == "lm_head.weight" else 0.0
        torch.testing.assert_close(tensor, original[name], atol=atol, rtol=0, msg=name)


def test_gguf_name_map():
    llama = GGUF_ARCHS["llama"]
    assert hf_tensor_name(llama, "blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_tensor_name(llama, "blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert hf_tensor_name(llama, "token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name(llama, "output.weight") == "lm_head.weight"
    assert hf_tensor_name(llama, "rope_freqs.weight") is None
    with pytest.raises(KeyError):
        hf_tensor_name(llama, "blk.0.attn_qkv.weight")


def test_gguf_unknown_architecture(tmp_path):
    writer = GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="'mamba' is not supported"):
        list(GGUFFormat().iter_weights(tmp_path / "x.gguf", LlamaConfig(**TINY)))


# -- the registered formats through the weight-format conformance suite ---------------------
class TestSafetensorsFormatSuite(WeightFormatSuite):
    registered_name = "*.safetensors"

    def write_checkpoint(self, folder, config, tensors):
        from safetensors.torch import save_file

        save_file(dict(tensors), str(folder / "model.safetensors"))
        return [folder / "model.safetensors"]


class TestTorchBinFormatSuite(WeightFormatSuite):
    registered_name = "*.bin"
    file_name = "pytorch_model.bin"

    def write_checkpoint(self, folder, config, tensors):
        torch.save(dict(tensors), folder / self.file_name)
        return [folder / self.file_name]


class TestTorchPtFormatSuite(TestTorchBinFormatSuite):
    registered_name = "*.pt"
    file_name = "model.pt"


class TestGGUFFormatSuite(WeightFormatSuite):
    registered_name = "*.gguf"

    def tolerance(self, name):
        return 0.02 if name == "lm_head.weight" else 0.0  # written as Q8_0, as llama.cpp does

    def write_checkpoint(self, folder, config, tensors):
        write_gguf_tensors(config, tensors, "llama", folder / "model.gguf", permute_qk=True)
        return [folder / "model.gguf"]
