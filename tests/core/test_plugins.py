"""The plugin manager: discovery of the installed example plugin, OCTAVO_PLUGINS, laziness."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from octavo.plugins import (
    DEFAULT_PLUGINS,
    REGISTRY_HOOKS,
    OctavoPluginManager,
    PluginError,
    Registry,
    attention_backends,
    get_plugin_manager,
    models,
    reset_plugin_manager,
)
from octavo.plugins import manager as manager_module
from octavo.plugins.registry import import_ref

EXAMPLE_DIST = "octavo-example-plugin"
EXAMPLE_ROOT = Path(__file__).resolve().parents[1] / "plugins" / "octavo-example-plugin"


pytestmark = pytest.mark.usefixtures("fresh_plugins")


def test_example_plugin_is_an_installed_distribution():
    (ep,) = [ep for ep in md.entry_points(group="octavo") if ep.name == "example"]
    assert ep.value == "octavo_example_plugin.plugin"
    assert ep.dist.name == EXAMPLE_DIST
    assert ep.dist.version == "0.1.0"
    # The editable install points at the copy in this repository.
    module = ep.load()
    assert Path(module.__file__).resolve().is_relative_to(EXAMPLE_ROOT)


def test_example_plugin_is_discovered_with_its_metadata_and_hooks():
    info = get_plugin_manager().plugins["example"]
    assert (info.distribution, info.version) == (EXAMPLE_DIST, "0.1.0")
    assert info.hooks == sorted([*REGISTRY_HOOKS, "register_commands"])
    assert attention_backends().entry("example-sdpa").origin == (
        f"plugin 'example' (distribution '{EXAMPLE_DIST}')")


def test_defaults_are_registered_first_as_a_plugin():
    pm = get_plugin_manager()
    assert list(pm.plugins)[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)
    core = pm.plugins["octavo.plugins.defaults"]
    assert core.distribution == "octavo-core"
    assert core.version == md.version("octavo-core")
    assert attention_backends().names()[0] == "torch"
    assert attention_backends().entry("torch").distribution == "octavo-core"


@pytest.mark.parametrize("hook", sorted(REGISTRY_HOOKS))
def test_every_default_resolves_to_its_interface(hook):
    registry = get_plugin_manager().registry(hook)
    interface = import_ref(REGISTRY_HOOKS[hook][1])
    defaults = [n for n in registry if registry.entry(n).plugin in DEFAULT_PLUGINS]
    for name in defaults:
        cls = registry.get(name)
        assert issubclass(cls, interface), (hook, name)


@pytest.mark.parametrize("allow, expect_example", [
    (None, True), ("example", True), (" models , example ", True), ("", False), ("models", False),
])
def test_octavo_plugins_allowlist(monkeypatch, allow, expect_example):
    if allow is not None:
        monkeypatch.setenv("OCTAVO_PLUGINS", allow)
    pm = get_plugin_manager()
    assert ("example" in pm.plugins) is expect_example
    assert ("example-sdpa" in attention_backends()) is expect_example
    assert ("OctavoExampleForCausalLM" in models()) is expect_example
    assert "torch" in attention_backends()  # core's defaults load whatever the allowlist says
    if allow == "":
        assert list(pm.plugins) == list(DEFAULT_PLUGINS)
    if allow is not None:
        assert set(pm.plugins) - set(DEFAULT_PLUGINS) <= {p.strip() for p in allow.split(",")}


def test_allowlist_naming_a_missing_plugin_warns(monkeypatch, caplog):
    monkeypatch.setenv("OCTAVO_PLUGINS", "example,no-such-plugin")
    with caplog.at_level(logging.WARNING, logger="octavo.plugins.manager"):
        pm = get_plugin_manager()
    assert "example" in pm.plugins
    assert "no-such-plugin" in caplog.text


def test_reset_applies_a_new_allowlist(monkeypatch):
    assert "example" in get_plugin_manager().plugins
    monkeypatch.setenv("OCTAVO_PLUGINS", "")
    assert "example" in get_plugin_manager().plugins  # loaded once: no change until reset
    reset_plugin_manager()
    assert "example" not in get_plugin_manager().plugins


def test_loads_once(monkeypatch):
    calls = []
    real = manager_module.discover_plugins
    monkeypatch.setattr(manager_module, "discover_plugins", lambda: calls.append(1) or real())
    pm = get_plugin_manager()
    assert get_plugin_manager() is pm
    pm.load()
    attention_backends()
    assert calls == [1]


def test_nothing_is_imported_before_first_use(monkeypatch):
    monkeypatch.delitem(sys.modules, "octavo_example_plugin.plugin", raising=False)
    monkeypatch.delitem(sys.modules, "octavo_example_plugin.attention", raising=False)
    pm = OctavoPluginManager()
    assert "octavo_example_plugin.plugin" not in sys.modules  # constructing loads nothing
    pm.load()
    assert "octavo_example_plugin.plugin" in sys.modules
    registry = pm.registry("register_attention_backends")
    assert registry.entry("example-sdpa").ref == (
        "octavo_example_plugin.attention:SDPAAttentionBackend")
    assert "octavo_example_plugin.attention" not in sys.modules  # string refs stay lazy
    cls = registry.get("example-sdpa")
    assert cls is sys.modules["octavo_example_plugin.attention"].SDPAAttentionBackend
    assert registry.get("example-sdpa") is cls


def test_registry_accepts_objects_and_reports_unknown_names():
    from octavo.attention.torch_backend import TorchAttentionBackend

    registry = Registry("attention backend", "octavo.attention.base:AttentionBackend")
    registry.add("direct", TorchAttentionBackend, "p", "dist-p")
    registry.add("lazy", "octavo.attention.torch_backend:TorchAttentionBackend", "p", "dist-p")
    assert registry.get("direct") is registry.get("lazy") is TorchAttentionBackend
    assert registry.load_all() == {"direct": TorchAttentionBackend, "lazy": TorchAttentionBackend}
    assert list(registry) == ["direct", "lazy"] and len(registry) == 2
    with pytest.raises(KeyError, match=r"no attention backend named 'nope' \(registered: direct, lazy\)"):
        registry.get("nope")


def test_registry_extra_check_names_the_plugin():
    registry = Registry("thing", check=lambda obj: None if callable(obj) else "not callable")
    registry.add("ok", len, "p", "dist-p")
    registry.add("bad", 3, "q", "dist-q")
    assert registry.get("ok") is len
    with pytest.raises(PluginError, match=r"thing 'bad' from plugin 'q' \(distribution 'dist-q'\): "
                                          r"not callable"):
        registry.get("bad")


def test_octavo_testing_is_a_pytest11_plugin(pytestconfig):
    (ep,) = [ep for ep in md.entry_points(group="pytest11") if ep.name == "octavo"]
    assert ep.value == "octavo.testing.pytest_plugin"
    assert ep.dist.name == "octavo-core"
    module = importlib.import_module("octavo.testing.pytest_plugin")
    assert ep.load() is module
    assert pytestconfig.pluginmanager.get_plugin("octavo") is module  # loaded in this session


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args, str(folder)], cwd=folder, capture_output=True, text=True,
                          timeout=120)


def test_the_pytest_plugin_leaves_other_projects_alone(tmp_path):
    """Core's pytest11 plugin is loaded wherever core is installed; a project that did not opt
    in keeps its own gpu tests running and does not pay for importing torch."""
    (tmp_path / "conftest.py").write_text(
        "def pytest_configure(config):\n"
        "    config.addinivalue_line('markers', 'gpu: this project means something else')\n")
    (tmp_path / "test_plain.py").write_text(
        "import sys\n\nimport pytest\n\n\ndef test_plain():\n"
        "    assert 'torch' not in sys.modules\n\n\n@pytest.mark.gpu\ndef test_own_gpu():\n"
        "    assert 'torch' not in sys.modules\n")
    result = run_pytest(tmp_path, "--strict-markers")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_pytest_plugin_acts_in_a_project_that_opts_in(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\noctavo_testing = true\n")
    (tmp_path / "test_gpu.py").write_text(
        "import pytest\n\n\n@pytest.mark.gpu\ndef test_needs_cuda():\n    pass\n\n\n"
        "@pytest.mark.slow\ndef test_slow():\n    pass\n")
    result = run_pytest(tmp_path, "--strict-markers", "-rs")
    assert result.returncode == 0, result.stdout + result.stderr
    import torch

    expected = "2 passed" if torch.cuda.is_available() else "1 passed, 1 skipped"
    assert expected in result.stdout
