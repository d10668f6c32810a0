"""The Triton dequantize-and-multiply kernel against the reference, in Triton's CPU interpreter
without CUDA (``tests/quant/conftest.py`` sets ``TRITON_INTERPRET=1``)."""

from __future__ import annotations

from types import SimpleNamespace

import octavo_quant_test_packer as packer  # registered by tests/quant/conftest.py
import pytest
import torch

from octavo.layers import ReplicatedLinear
from octavo_quant.awq import AWQMethod
from octavo_quant.gptq import GPTQMethod
from octavo_quant.kernels import ReferenceKernel, TritonKernel, select_kernel

pytest.importorskip("triton")
Recipe = packer.Recipe
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def quantized_layer(recipe: Recipe, out_features: int, in_features: int, seed: int):
    """A linear layer loaded from fresh random ``recipe`` tensors, with a random bias."""
    torch.manual_seed(seed)
    q = packer.quantize(torch.randn(out_features, in_features) * 0.1, recipe, seed=seed)
    cls, tensors = ((AWQMethod, packer.awq_tensors) if recipe.method == "awq"
                    else (GPTQMethod, packer.gptq_tensors))
    method = cls.from_config(packer.quant_config(recipe))
    layer = ReplicatedLinear(in_features, out_features, bias=True, quant_method=method)
    for name, tensor in tensors(q, recipe).items():
        getattr(layer, name).weight_loader(getattr(layer, name), tensor)
    layer.bias.data.normal_()
    return layer.to(DEVICE), method


CASES = {  # id: (recipe, out_features, in_features, rows)
    "g32-m1": (Recipe(group_size=32), 64, 128, 1),
    "g128-asym-m5": (Recipe(group_size=128, sym=False), 96, 256, 5),
    "per-row-m3": (Recipe(group_size=-1), 80, 96, 3),
    "desc-act-g32-m1": (Recipe(group_size=32, desc_act=True, sym=False), 64, 128, 1),
    "desc-act-g128-m7": (Recipe(group_size=128, desc_act=True), 72, 256, 7),
    "g48-gather-m2": (Recipe(group_size=48), 64, 144, 2),  # not a multiple of BLOCK_K
    "8bit-g32-m4": (Recipe(bits=8, group_size=32, sym=False), 64, 96, 4),
    "8bit-desc-act-m1": (Recipe(bits=8, group_size=32, desc_act=True), 48, 64, 1),
    "awq-g32-m1": (Recipe(method="awq", group_size=32), 64, 128, 1),
    "awq-g128-m20": (Recipe(method="awq", group_size=128), 72, 256, 20),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_triton_kernel_matches_the_reference(case):
    recipe, out_features, in_features, rows = case
    layer, method = quantized_layer(recipe, out_features, in_features, seed=len(CASES) + rows)
    x = torch.randn(rows, in_features, device=DEVICE)
    expected = ReferenceKernel(method)(layer, x, layer.bias)
    kernel = TritonKernel.build(method.unpack(layer))
    assert (kernel.group_size != 0) == (not recipe.desc_act and recipe.group_size != 48)
    got = kernel(layer, x, layer.bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_half_precision_rounds_the_weight_as_the_reference_does():
    layer, method = quantized_layer(Recipe(group_size=32, desc_act=True), 64, 128, seed=3)
    x = torch.randn(2, 3, 128, device=DEVICE).half()
    expected = ReferenceKernel(method)(layer, x, layer.bias.half())
    got = TritonKernel.build(method.unpack(layer))(layer, x, layer.bias.half())
    assert got.shape == (2, 3, 64) and got.dtype == torch.float16
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)


def test_cuda_layers_select_the_triton_kernel(monkeypatch):
    layer, method = quantized_layer(Recipe(), 32, 64, seed=0)
    on_cuda = SimpleNamespace(bits=4, qweight=SimpleNamespace(device=torch.device("cuda")))
    monkeypatch.setattr(method, "unpack", lambda _layer: on_cuda)
    monkeypatch.setattr(TritonKernel, "build", classmethod(lambda cls, w: ("triton", w)))
    assert select_kernel(method, layer) == ("triton", on_cuda)
