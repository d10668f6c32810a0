"""Bad quantized checkpoints fail with errors that name the file and the tensor."""

from __future__ import annotations

import json
import shutil

import octavo_quant_test_packer as packer  # registered by tests/quant/conftest.py
import pytest
import torch
from safetensors.torch import load_file, save_file

from octavo.config import ModelSettings
from octavo.model_loader.loader import load_model

Recipe = packer.Recipe


@pytest.fixture
def broken_copy(quantized_checkpoint, tmp_path):
    """``copy(recipe) -> folder``: a writable copy of a quantized checkpoint."""

    def copy(recipe=None):
        folder = tmp_path / "broken"
        shutil.copytree(quantized_checkpoint(recipe or Recipe())[0], folder)
        return folder

    return copy


def load(folder):
    return load_model(ModelSettings(model=str(folder), device="cpu"))


def edit_config(folder, name, **changes):
    path = folder / name
    config = json.loads(path.read_text())
    target = config["quantization_config"] if name == "config.json" else config
    target.update(changes)
    path.write_text(json.dumps(config))


def edit_tensors(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(("changes", "words"), [
    ({"quant_method": "bitsandbytes"}, ["'bitsandbytes' is not supported", "gptq", "awq"]),
    ({"bits": 3}, ["bits=3 is not supported"]),
    ({"checkpoint_format": "marlin"}, ["checkpoint_format='marlin'"]),
    ({"group_size": 0}, ["group_size=0"]),
])
def test_unsupported_configs_name_the_config_file(broken_copy, changes, words):
    folder = broken_copy()
    edit_config(folder, "config.json", **changes)
    with pytest.raises(ValueError) as info:
        load(folder)
    for word in [str(folder / "config.json"), *words]:
        assert word in str(info.value)


def test_unsupported_awq_version_names_the_side_file(broken_copy):
    folder = broken_copy(Recipe(method="awq", config_file="quant_config.json"))
    edit_config(folder, "quant_config.json", version="GEMV")
    with pytest.raises(ValueError, match=r"quant_config.json: awq: version='gemv'"):
        load(folder)


def test_missing_tensor_is_named(broken_copy):
    folder = broken_copy()
    edit_tensors(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.qzeros"))
    with pytest.raises(ValueError) as info:
        load(folder)
    assert "model.layers.1.mlp.up_proj.qzeros" in str(info.value)
    assert "model.safetensors" in str(info.value)


def test_wrong_shape_is_named(broken_copy):
    folder = broken_copy()

    def shrink(tensors):
        name = "model.layers.0.self_attn.o_proj.scales"
        tensors[name] = tensors[name][:-1].clone()

    edit_tensors(folder, shrink)
    with pytest.raises(ValueError) as info:
        load(folder)
    message = str(info.value)
    assert "model.layers.0.self_attn.o_proj.scales" in message and "shape" in message
    assert "model.safetensors" in message


def test_merged_shards_with_different_g_idx_are_refused(broken_copy):
    folder = broken_copy(Recipe(desc_act=True))

    def reorder(tensors):
        name = "model.layers.0.self_attn.k_proj.g_idx"
        tensors[name] = torch.flip(tensors[name], [0]).contiguous()

    edit_tensors(folder, reorder)
    with pytest.raises(ValueError, match=r"qkv_proj.g_idx: the merged shards have different g_idx"):
        load(folder)


def test_desc_act_without_g_idx_is_refused(broken_copy):
    folder = broken_copy(Recipe(write_g_idx=False))
    edit_config(folder, "config.json", desc_act=True)
    with pytest.raises(ValueError, match="desc_act but no g_idx"):
        load(folder)
