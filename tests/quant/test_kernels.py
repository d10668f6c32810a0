"""The CPU 4-bit and 8-bit kernels against the reference (dequantize + dense product): torch's
int4 product (bfloat16 inside) and the ``pack_int4_linear`` / ``pack_int8_linear`` layer ops
(octavo-kernels-cpu's C++ kernels, float32), which float32 layers select where installed."""

from __future__ import annotations

import octavo_quant_test_packer as packer  # registered by tests/quant/conftest.py
import pytest
import torch

from octavo.layers import ReplicatedLinear
from octavo_quant import kernels
from octavo_quant.gptq import GPTQMethod
from octavo_quant.kernels import (
    Int4CpuKernel,
    PackedInt4Kernel,
    PackedInt8Kernel,
    ReferenceKernel,
    select_kernel,
)

Recipe = packer.Recipe


def quantized_layer(recipe: Recipe, out_features: int, in_features: int, bias: bool = False,
                    seed: int = 0):
    torch.manual_seed(seed)
    q = packer.quantize(torch.randn(out_features, in_features) * 0.1, recipe)
    method = GPTQMethod.from_config(packer.quant_config(recipe))
    layer = ReplicatedLinear(in_features, out_features, bias=bias, quant_method=method)
    for name, tensor in packer.gptq_tensors(q, recipe).items():
        getattr(layer, name).weight_loader(getattr(layer, name), tensor)
    if bias:
        layer.bias.data.normal_()
    return layer, method


@pytest.mark.parametrize("recipe", [
    Recipe(group_size=32), Recipe(group_size=128, sym=False), Recipe(group_size=-1),
    Recipe(group_size=64, desc_act=True, sym=False), Recipe(group_size=96),
], ids=["g32", "g128-asym", "per-row", "desc-act", "g96"])
@pytest.mark.parametrize("rows", [1, 5, 16])
def test_int4_kernel_matches_the_reference(recipe, rows):
    layer, method = quantized_layer(recipe, 96, 384, bias=True)
    x = torch.randn(rows, 384)
    expected = ReferenceKernel(method)(layer, x, layer.bias)
    kernel = Int4CpuKernel.build(method.unpack(layer))
    got = kernel(layer, x, layer.bias)
    scale = expected.abs().max()
    torch.testing.assert_close(got, expected, rtol=0, atol=float(scale) * 2e-2)  # bfloat16
    assert (got - expected).abs().max() > 0  # it really computed in bfloat16


@pytest.mark.parametrize("recipe", [
    Recipe(group_size=32), Recipe(group_size=128, sym=False), Recipe(group_size=-1),
    Recipe(group_size=64, desc_act=True, sym=False), Recipe(group_size=96),
    Recipe(group_size=48, desc_act=True),
], ids=["g32", "g128-asym", "per-row", "desc-act", "g96", "desc-act-g48"])
@pytest.mark.parametrize("rows", [1, 5, 16])
def test_packed_int4_kernel_matches_the_reference(recipe, rows):
    layer, method = quantized_layer(recipe, 80, 384, bias=True, seed=rows)
    kernel = select_kernel(method, layer)
    if not isinstance(kernel, PackedInt4Kernel):
        pytest.skip("no pack_int4_linear layer op here (octavo-kernels-cpu without a compiler)")
    x = torch.randn(2, rows, 384)
    expected = ReferenceKernel(method)(layer, x, layer.bias)
    torch.testing.assert_close(kernel(layer, x, layer.bias), expected, rtol=1e-5, atol=1e-5)
    assert (kernel.perm is not None) == recipe.desc_act


def int8_op_available() -> bool:
    return kernels.find_pack_op("pack_int8_linear", torch.float32) is not None


@pytest.mark.parametrize("recipe", [
    Recipe(bits=8, group_size=32), Recipe(bits=8, group_size=128, sym=False),
    Recipe(bits=8, group_size=-1), Recipe(bits=8, group_size=64, desc_act=True, sym=False),
    Recipe(bits=8, group_size=96), Recipe(bits=8, group_size=48, desc_act=True),
    Recipe(bits=8, group_size=128, checkpoint_format="gptq_v2", sym=False),
], ids=["g32", "g128-asym", "per-row", "desc-act", "g96", "desc-act-g48", "v2-g128-asym"])
@pytest.mark.parametrize("rows", [1, 5, 16])
def test_packed_int8_kernel_matches_the_reference(recipe, rows):
    layer, method = quantized_layer(recipe, 80, 384, bias=True, seed=rows)
    if not int8_op_available():
        pytest.skip("no pack_int8_linear layer op here (octavo-kernels-cpu without a compiler, "
                    "or a core without the op)")
    kernel = select_kernel(method, layer)
    assert isinstance(kernel, PackedInt8Kernel) and kernel.name == "int8_packed"
    x = torch.randn(2, rows, 384)
    expected = ReferenceKernel(method)(layer, x, layer.bias)
    torch.testing.assert_close(kernel(layer, x, layer.bias), expected, rtol=1e-5, atol=1e-5)
    assert (kernel.perm is not None) == recipe.desc_act


def test_the_int8_kernel_keeps_a_byte_per_weight():
    if not int8_op_available():
        pytest.skip("no pack_int8_linear layer op here")
    layer, method = quantized_layer(Recipe(bits=8, group_size=128), 64, 256)
    method.process_weights_after_loading(layer)
    assert isinstance(layer.quant_kernel, PackedInt8Kernel)
    assert not hasattr(layer, "qweight")
    after = sum(b.numel() * b.element_size() for b in layer.buffers())
    assert after == 64 * 256 + 2 * 4 * 64 * 2 + 2 * 8  # codes, scale and scale * zero, ends


def test_bfloat16_layers_keep_torchs_int4_product():
    torch.manual_seed(0)
    q = packer.quantize(torch.randn(32, 64) * 0.1, Recipe())
    method = GPTQMethod.from_config(packer.quant_config(Recipe()))
    layer = ReplicatedLinear(64, 32, bias=False, quant_method=method,
                            dtype=torch.bfloat16)
    for name, tensor in packer.gptq_tensors(q, Recipe()).items():
        getattr(layer, name).weight_loader(getattr(layer, name), tensor)
    assert isinstance(select_kernel(method, layer), Int4CpuKernel)


def test_without_the_layer_op_float32_layers_use_torchs_int4_product(monkeypatch):
    layer, method = quantized_layer(Recipe(), 32, 64)
    monkeypatch.setattr(kernels, "find_layer_op", lambda op, x: None)
    assert isinstance(select_kernel(method, layer), Int4CpuKernel)


def test_groups_that_do_not_fit_torchs_op_fall_back_to_the_reference(monkeypatch):
    layer, method = quantized_layer(Recipe(group_size=32), 32, 48)  # 48: no 32-multiple run
    if select_kernel(method, layer).name == "int4_packed":  # the C++ kernel takes any runs
        monkeypatch.setattr(kernels, "find_layer_op", lambda op, x: None)
    assert isinstance(select_kernel(method, layer), ReferenceKernel)


def test_eight_bit_without_the_layer_op_uses_the_reference(monkeypatch):
    layer, method = quantized_layer(Recipe(bits=8), 32, 64)
    monkeypatch.setattr(kernels, "find_layer_op", lambda op, x: None)
    assert isinstance(select_kernel(method, layer), ReferenceKernel)


def test_eight_bit_bfloat16_layers_use_the_reference():
    torch.manual_seed(0)
    recipe = Recipe(bits=8)
    q = packer.quantize(torch.randn(32, 64) * 0.1, recipe)
    method = GPTQMethod.from_config(packer.quant_config(recipe))
    layer = ReplicatedLinear(64, 32, bias=False, quant_method=method, dtype=torch.bfloat16)
    for name, tensor in packer.gptq_tensors(q, recipe).items():
        getattr(layer, name).weight_loader(getattr(layer, name), tensor)
    assert isinstance(select_kernel(method, layer), ReferenceKernel)


def test_the_env_forces_the_reference(monkeypatch):
    monkeypatch.setenv("OCTAVO_QUANT_KERNEL", "reference")
    for bits in (4, 8):
        layer, method = quantized_layer(Recipe(bits=bits), 32, 64)
        assert isinstance(select_kernel(method, layer), ReferenceKernel)


def test_the_fast_kernel_drops_the_checkpoint_tensors():
    layer, method = quantized_layer(Recipe(), 64, 256)
    method.process_weights_after_loading(layer)
    assert not hasattr(layer, "qweight")
    after = sum(b.numel() * b.element_size() for b in layer.buffers())
    # under a byte per weight (groups of 32: 0.5 byte of codes, 0.19-0.25 of scales and zeros)
    assert after < 64 * 256
    method.process_weights_after_loading(layer)  # a second call keeps the packed kernel
    assert isinstance(layer.quant_kernel, (Int4CpuKernel, PackedInt4Kernel))
