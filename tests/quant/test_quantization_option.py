"""``--quantization`` / ``OCTAVO_QUANTIZATION`` / ``LLM(quantization=...)``: force a registered
method; a name that is unknown or does not match the checkpoint fails in one line."""

from __future__ import annotations

import octavo_quant_test_packer as packer  # registered by tests/quant/conftest.py
import pytest
from click.testing import CliRunner

from octavo.cli import cli
from octavo.config import ModelSettings
from octavo.layers.quantization import UnquantizedMethod
from octavo.model_loader.loader import load_model
from octavo_quant.awq import AWQMethod
from octavo_quant.gptq import GPTQMethod

Recipe = packer.Recipe


def load(folder, quantization):
    return load_model(ModelSettings(model=str(folder), device="cpu", quantization=quantization))


def quant_methods(loaded):
    return {type(m.quant_method) for m in loaded.model.modules() if hasattr(m, "quant_method")}


@pytest.mark.parametrize(("recipe", "name", "cls"), [
    (Recipe(), "gptq", GPTQMethod), (Recipe(method="awq"), "awq", AWQMethod),
    (Recipe(), None, GPTQMethod),
], ids=["gptq", "awq", "from-checkpoint"])
def test_the_named_method_loads_a_matching_checkpoint(quantized_checkpoint, recipe, name, cls):
    folder = quantized_checkpoint(recipe)[0]
    assert cls in quant_methods(load(folder, name))


def test_an_unknown_name_lists_the_registered_methods(quantized_checkpoint):
    with pytest.raises(ValueError) as info:
        load(quantized_checkpoint(Recipe())[0], "marlin")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown quantization method 'marlin'" in message
    assert "--quantization" in message and "awq" in message and "gptq" in message


def test_a_name_that_is_not_the_checkpoints_method_fails(quantized_checkpoint):
    folder = quantized_checkpoint(Recipe())[0]
    with pytest.raises(ValueError) as info:
        load(folder, "awq")
    message = str(info.value)
    assert "\n" not in message
    assert "--quantization awq does not match the checkpoint's quant_method 'gptq'" in message
    assert str(folder / "config.json") in message


def test_a_dense_checkpoint_with_a_method_fails(quantized_checkpoint):
    float_folder = quantized_checkpoint(Recipe())[1]
    with pytest.raises(ValueError, match="--quantization gptq: the checkpoint is not quantized"):
        load(float_folder, "gptq")
    for name in (None, "none"):
        assert quant_methods(load(float_folder, name)) == {UnquantizedMethod}


def test_the_environment_sets_it(monkeypatch):
    monkeypatch.setenv("OCTAVO_QUANTIZATION", "awq")
    assert ModelSettings().quantization == "awq"


def test_the_cli_option_reaches_the_loader_and_reports_a_usage_error(quantized_checkpoint):
    folder = quantized_checkpoint(Recipe())[0]
    result = CliRunner().invoke(cli, ["generate", "--model", str(folder), "--device", "cpu",
                                      "--quantization", "awq", "--max-tokens", "1", "hi"])
    assert result.exit_code == 2, result.output
    assert "does not match the checkpoint's quant_method 'gptq'" in result.output
