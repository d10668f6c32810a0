"""Fixtures of the quantization tests: the test-side checkpoint writer and quantized tiny
models (Llama and Qwen2 shapes) with their dequantized float twins."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

# The Triton kernel's tests run in Triton's CPU interpreter without CUDA; Triton reads this when
# a kernel is defined, so it is set before octavo_quant.triton_gemm can be imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _load_packer():
    name = "octavo_quant_test_packer"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("packer.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


packer = _load_packer()

# Shapes chosen so every group size divides (or, for GPTQ's 96, leaves a partial last group).
TINY_QUANT = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128)


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory):
    """``get(arch) -> (hf_model, folder)``: a tiny random HF model of ``arch`` and its folder."""
    from octavo.testing.tiny_models import save_tiny_model

    made = {}

    def get(arch: str):
        if arch not in made:
            folder = tmp_path_factory.mktemp(f"hf-{arch}")
            made[arch] = (save_tiny_model(folder, arch, **TINY_QUANT), folder)
        return made[arch]

    return get


@pytest.fixture(scope="session")
def quantized_checkpoint(tmp_path_factory, tiny_hf_models):
    """``make(recipe, arch="llama") -> (folder, float_folder, fake)``: the tiny model quantized
    by ``recipe``, its dequantized float32 twin and the fake-quantized weights by HF name."""
    made = {}

    def make(recipe, arch: str = "llama"):
        key = (recipe, arch)
        if key not in made:
            hf_model, hf_folder = tiny_hf_models(arch)
            root = tmp_path_factory.mktemp(f"{recipe.method}-{arch}")
            folder, float_folder = root / "quantized", root / "float"
            fake = packer.write_checkpoint(hf_model, folder, recipe, float_folder)
            for tok in hf_folder.glob("*token*"):
                shutil.copy(tok, folder)
                shutil.copy(tok, float_folder)
            made[key] = (folder, float_folder, fake)
        return made[key]

    return make
