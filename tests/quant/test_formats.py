"""Every GPTQ / AWQ format row loads into Octavo's (merged) layers and dequantizes to exactly
the weights the writer quantized to."""

from __future__ import annotations

import octavo_quant_test_packer as packer  # registered by tests/quant/conftest.py
import pytest
import torch

from octavo.config import ModelSettings
from octavo.model_loader.loader import load_model
from octavo_quant.kernels import KERNEL_ENV

Recipe = packer.Recipe

FORMAT_ROWS = {
    "gptq-v1-4bit-g32-sym": Recipe(),
    "gptq-v1-4bit-g64-asym": Recipe(group_size=64, sym=False),
    "gptq-v1-4bit-g128-partial-groups": Recipe(group_size=128, sym=False),
    "gptq-v1-4bit-per-row": Recipe(group_size=-1),
    "gptq-v1-4bit-desc-act-asym": Recipe(desc_act=True, sym=False),
    "gptq-v2-4bit-desc-act": Recipe(desc_act=True, checkpoint_format="gptq_v2"),
    "gptq-v2-4bit-asym": Recipe(sym=False, checkpoint_format="gptq_v2"),
    "gptq-v1-8bit-g32-asym": Recipe(bits=8, sym=False),
    "gptq-v2-8bit-per-row": Recipe(bits=8, group_size=-1, checkpoint_format="gptq_v2"),
    "gptq-v1-8bit-desc-act": Recipe(bits=8, desc_act=True, group_size=64),
    "gptq-no-g-idx": Recipe(write_g_idx=False, sym=False),
    "gptq-quantize-config-json": Recipe(config_file="quantize_config.json", sym=False),
    "awq-g32": Recipe(method="awq"),
    "awq-g64": Recipe(method="awq", group_size=64),
    "awq-quant-config-json": Recipe(method="awq", config_file="quant_config.json"),
}

# Octavo's merged layers and the HF tensors each holds, in order
MERGED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "self_attn.o_proj": ("self_attn.o_proj",),
          "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
          "mlp.down_proj": ("mlp.down_proj",)}


def load_reference(folder, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "reference")
    return load_model(ModelSettings(model=str(folder), device="cpu")).model


def assert_dequantized_exactly(model, fake, num_layers=2, names=tuple(MERGED)):
    for i in range(num_layers):
        layer = model.model.layers[i]
        for name in names:
            sources = MERGED[name]
            module = layer.get_submodule(name)
            expected = torch.cat([fake[f"model.layers.{i}.{s}.weight"] for s in sources])
            torch.testing.assert_close(module.quant_method.dequantize(module), expected,
                                       rtol=0, atol=0, msg=f"layer {i} {name}")


@pytest.mark.parametrize("row", sorted(FORMAT_ROWS))
def test_dequantized_weights_equal_the_writers_fake_quantized_weights(
        row, quantized_checkpoint, monkeypatch):
    recipe = FORMAT_ROWS[row]
    folder, _, fake = quantized_checkpoint(recipe)
    model = load_reference(folder, monkeypatch)
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert qkv.quant_method.name == recipe.method
    assert_dequantized_exactly(model, fake)


def test_qwen2_biases_load_beside_quantized_weights(quantized_checkpoint, monkeypatch):
    folder, _, fake = quantized_checkpoint(Recipe(sym=False, desc_act=True), arch="qwen2")
    model = load_reference(folder, monkeypatch)
    assert model.model.layers[0].self_attn.qkv_proj.bias is not None
    assert_dequantized_exactly(model, fake)


def test_awq_modules_to_not_convert_load_dense(quantized_checkpoint, monkeypatch):
    folder, _, fake = quantized_checkpoint(Recipe(method="awq", skip=("mlp.down_proj",)))
    model = load_reference(folder, monkeypatch)
    for layer in model.model.layers:
        assert layer.mlp.down_proj.quant_method.name == "none"
        assert layer.mlp.gate_up_proj.quant_method.name == "awq"
    assert "model.layers.0.mlp.down_proj.weight" not in fake  # the writer left it dense
    assert_dequantized_exactly(model, fake, names=("self_attn.qkv_proj", "mlp.gate_up_proj"))


def test_the_v1_zero_borrow_edge_case_reads_back_exactly():
    """A true zero of 0 stored as ``z - 1`` borrows from the next field of the word."""
    from octavo.layers import ReplicatedLinear
    from octavo_quant.gptq import GPTQMethod

    recipe = Recipe(sym=False, group_size=32)
    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    weight[::3, :32] = weight[::3, :32].abs() + 0.01  # all-positive groups: zero point 0
    q = packer.quantize(weight, recipe)
    assert (q.zeros == 0).any() and (q.zeros[:, 1:] == 0).any()
    tensors = packer.gptq_tensors(q, recipe)
    naive = _or_packed_fields(q.zeros - 1)  # a field-by-field packing would differ here
    assert not torch.equal(tensors["qzeros"], naive)
    method = GPTQMethod.from_config(packer.quant_config(recipe))
    layer = ReplicatedLinear(64, 16, quant_method=method)
    for name, tensor in tensors.items():
        getattr(layer, name).weight_loader(getattr(layer, name), tensor)
    torch.testing.assert_close(method.dequantize(layer), q.fake_quantized(), rtol=0, atol=0)


def _or_packed_fields(values: torch.Tensor) -> torch.Tensor:
    fields = (values & 0xF).to(torch.int64).reshape(values.shape[0], -1, 8)
    words = (fields << torch.arange(0, 32, 4)).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)
