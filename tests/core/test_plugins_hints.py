"""Every "nothing registered" error names the distribution to install."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from octavo.cli import cli
from octavo.plugins import Registry, models, weight_formats

pytestmark = pytest.mark.usefixtures("fresh_plugins")


def test_an_empty_registry_names_its_provider():
    registry = Registry("model", provider="octavo-models")
    with pytest.raises(KeyError, match=r"no model named 'X' \(registered: none: install "
                                       r"octavo-models \(pip install octavo-models\)"):
        registry.entry("X")
    assert "install a plugin that registers one" in Registry("thing").install_hint()


def test_core_alone_says_to_install_octavo_models(monkeypatch, tiny_llama):
    from octavo import LLM

    monkeypatch.setenv("OCTAVO_PLUGINS", "")  # core's defaults only, as after pip install
    assert not models() and not weight_formats()
    with pytest.raises(ValueError, match=r"^no model is registered, so no model can load: "
                                         r"install octavo-models \(pip install octavo-models\)"):
        LLM(str(tiny_llama), device="cpu")


def test_the_cli_prints_it_in_one_line(monkeypatch):
    monkeypatch.setenv("OCTAVO_PLUGINS", "")
    result = CliRunner().invoke(cli, ["generate", "hi"])
    assert result.exit_code == 2
    assert ("Error: no model is registered, so no model can load: install octavo-models "
            "(pip install octavo-models)") in result.output
    assert "Traceback" not in result.output


def test_an_unknown_architecture_lists_the_registered_ones():
    from types import SimpleNamespace

    from octavo.model_loader.loader import model_class

    with pytest.raises(ValueError, match="'NopeForCausalLM' is not supported; registered "
                                         "architectures: .*LlamaForCausalLM"):
        model_class(SimpleNamespace(architectures=["NopeForCausalLM"]))
