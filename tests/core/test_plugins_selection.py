"""OCTAVO_PLUGINS and OCTAVO_DISABLE_PLUGINS: allowlist, what allowed plugins need, denylist."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from octavo.plugins import attention_backends, get_plugin_manager, models
from octavo.plugins.selection import Selection, needed_by, read_selection, split_entry_points

pytestmark = pytest.mark.usefixtures("fresh_plugins")


def ep(name: str, dist: str, *requires: str) -> SimpleNamespace:
    """A stand-in for an entry point: its name and its distribution's requirements."""
    return SimpleNamespace(name=name, dist=SimpleNamespace(name=dist, requires=list(requires)))


FOUND = [
    ep("cpu", "octavo-kernels-cpu", "octavo-core==0.1.0"),
    ep("models", "octavo-models", "octavo-core==0.1.0", "gguf>=0.10"),
    ep("quant", "octavo_quant", "octavo-core==0.1.0", "Octavo.Models==0.1.0"),
    ep("server", "octavo-server", "octavo-core==0.1.0", "octavo-quant",
       'octavo-kernels-cpu; extra == "fast"', 'octavo-bench; python_version < "3"'),
    ep("bench", "octavo-bench", "octavo-core"),
]


def names(eps) -> list[str]:
    return [e.name for e in eps]


@pytest.mark.parametrize("env, allow, deny", [
    ({}, None, set()),
    ({"OCTAVO_PLUGINS": ""}, set(), set()),
    ({"OCTAVO_PLUGINS": " a , b "}, {"a", "b"}, set()),
    ({"OCTAVO_PLUGINS": "-a, -b"}, None, {"a", "b"}),  # only -names: a denylist
    ({"OCTAVO_PLUGINS": "a,-b"}, {"a"}, {"b"}),
    ({"OCTAVO_DISABLE_PLUGINS": "c,,d"}, None, {"c", "d"}),
    ({"OCTAVO_PLUGINS": "a", "OCTAVO_DISABLE_PLUGINS": "a"}, {"a"}, {"a"}),
])
def test_read_selection(env, allow, deny):
    selection = read_selection(env)
    assert selection.allow == (None if allow is None else frozenset(allow))
    assert selection.deny == frozenset(deny)


def test_needed_by_follows_unconditional_requirements_transitively():
    assert needed_by(["server"], FOUND) == {"quant", "models"}  # not cpu (extra), not bench
    assert needed_by(["quant"], FOUND) == {"models"}  # names compared normalized
    assert needed_by(["cpu"], FOUND) == set()


def test_allowlist_keeps_what_allowed_plugins_need():
    enabled, disabled = split_entry_points(FOUND, read_selection({"OCTAVO_PLUGINS": "server"}))
    assert names(enabled) == ["models", "quant", "server"]
    assert [(e.name, why) for e, why in disabled] == [
        ("cpu", "not in OCTAVO_PLUGINS"), ("bench", "not in OCTAVO_PLUGINS")]


def test_denylist_wins_and_warns_about_what_is_lost(caplog):
    selection = read_selection({"OCTAVO_PLUGINS": "server,-models",
                                "OCTAVO_DISABLE_PLUGINS": "bench,ghost"})
    with caplog.at_level(logging.WARNING, logger="octavo.plugins.selection"):
        enabled, disabled = split_entry_points(FOUND, selection)
    assert names(enabled) == ["quant", "server"]
    assert dict((e.name, why) for e, why in disabled) == {
        "cpu": "not in OCTAVO_PLUGINS", "models": "disabled by OCTAVO_PLUGINS=-models",
        "bench": "disabled by OCTAVO_DISABLE_PLUGINS"}
    assert "name plugins that are not installed: ghost" in caplog.text
    assert "plugin 'quant' is loaded but the plugins it depends on are disabled: models" in (
        caplog.text)


def test_no_selection_enables_everything():
    enabled, disabled = split_entry_points(FOUND, Selection(None, frozenset(), frozenset()))
    assert names(enabled) == names(FOUND) and disabled == []


def test_denylist_on_the_installed_plugins(monkeypatch):
    monkeypatch.setenv("OCTAVO_DISABLE_PLUGINS", "example")
    pm = get_plugin_manager()
    assert "example" not in pm.plugins and pm.disabled["example"].status == "disabled"
    assert "example-sdpa" not in attention_backends()
    assert "LlamaForCausalLM" in models()


def test_minus_item_in_the_allowlist_on_the_installed_plugins(monkeypatch):
    monkeypatch.setenv("OCTAVO_PLUGINS", "-example")
    pm = get_plugin_manager()
    assert "example" in pm.disabled and "models" in pm.plugins


def test_allowing_the_server_keeps_the_model_families_it_depends_on(monkeypatch):
    monkeypatch.setenv("OCTAVO_PLUGINS", "server")
    pm = get_plugin_manager()
    assert {"server", "models"} <= set(pm.plugins) and "example" in pm.disabled
    assert "LlamaForCausalLM" in models()
