"""Third-party plugins outside packages/: one overrides built-ins, one fails to import.

Neither is installed: ``installed_plugins`` writes each one's ``*.dist-info`` (METADATA with
its requirements, entry_points.txt) from its pyproject.toml into a temporary folder on
``sys.path``, beside its ``src``, so ``importlib.metadata`` finds it as pip would have
installed it, for one test only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from octavo.cli import cli
from octavo.plugins import get_plugin_manager, models, schedulers

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"

pytestmark = pytest.mark.usefixtures("fresh_plugins")


def write_dist_info(site: Path, root: Path) -> list[str]:
    """Write ``root``'s dist-info into ``site``; the modules it provides."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    requires = "".join(f"Requires-Dist: {r}\n" for r in project.get("dependencies", []))
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n{requires}")
    entry_points = project["entry-points"]["octavo"]
    (info / "entry_points.txt").write_text(
        "[octavo]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return [v.split(".")[0] for v in entry_points.values()]


@pytest.fixture
def installed_plugins(tmp_path, monkeypatch):
    """``installed_plugins("octavo-acme-plugin", ...)``: those plugins are discoverable; the
    PYTHONPATH a subprocess needs to see them too."""
    packages: list[str] = []

    def install(*dirs: str) -> str:
        paths = [str(tmp_path)]
        for name in dirs:
            packages.extend(write_dist_info(tmp_path, PLUGINS / name))
            paths.append(str(PLUGINS / name / "src"))
        for path in reversed(paths):
            monkeypatch.syspath_prepend(path)
        return os.pathsep.join(paths)

    yield install
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            del sys.modules[name]


def test_acme_overrides_a_core_scheduler_and_a_models_architecture(installed_plugins):
    installed_plugins("octavo-acme-plugin")
    fcfs, llama = schedulers().entry("fcfs"), models().entry("LlamaForCausalLM")
    assert (fcfs.plugin, fcfs.replaces.plugin) == ("acme", "octavo.plugins.defaults")
    assert (llama.plugin, llama.replaces.plugin) == ("acme", "models")
    assert schedulers().get("fcfs").__name__ == "AcmeFCFSScheduler"
    names = models().names()
    assert names.index("LlamaForCausalLM") + 1 == names.index("MistralForCausalLM")  # in place
    out = CliRunner().invoke(cli, ["plugins"]).output
    assert "    register_models: LlamaForCausalLM (overrides plugin 'models')\n" in out
    assert "LlamaForCausalLM (overridden by plugin 'acme'), MistralForCausalLM" in out


def test_the_engine_runs_the_overrides(installed_plugins, tiny_llama):
    from octavo import LLM, SamplingParams

    installed_plugins("octavo-acme-plugin")
    llm = LLM(str(tiny_llama), device="cpu", kv_cache_memory_gib=0.01)
    llm.generate(["hello"], SamplingParams(max_tokens=3, temperature=0))
    scheduler, model = schedulers().get("fcfs"), models().get("LlamaForCausalLM")
    assert scheduler.steps >= 3 and model.forwards >= 3


def test_the_denylist_brings_the_builtins_back(installed_plugins, monkeypatch):
    installed_plugins("octavo-acme-plugin")
    monkeypatch.setenv("OCTAVO_DISABLE_PLUGINS", "acme")
    assert schedulers().entry("fcfs").plugin == "octavo.plugins.defaults"
    assert models().entry("LlamaForCausalLM").plugin == "models"
    assert get_plugin_manager().disabled["acme"].reason == "disabled by OCTAVO_DISABLE_PLUGINS"


def test_allowing_acme_keeps_models_which_it_depends_on(installed_plugins, monkeypatch):
    installed_plugins("octavo-acme-plugin")
    monkeypatch.setenv("OCTAVO_PLUGINS", "acme")
    assert set(get_plugin_manager().plugins) >= {"acme", "models"}
    assert "*.safetensors" in get_plugin_manager().registry("register_weight_formats")


def test_a_broken_plugin_is_reported_and_skipped(installed_plugins):
    installed_plugins("octavo-broken-plugin", "octavo-acme-plugin")
    pm = get_plugin_manager()
    assert "broken" in pm.failed and "acme" in pm.plugins
    assert "ImportError: libacme.so" in pm.failed["broken"].reason


def test_a_broken_plugin_does_not_take_the_console_script_down(installed_plugins):
    pythonpath = installed_plugins("octavo-broken-plugin")
    env = {**os.environ, "PYTHONPATH": pythonpath}
    env.pop("OCTAVO_PLUGINS", None)
    out = {}
    for command in ("--help", "plugins"):
        proc = subprocess.run([sys.executable, "-m", "octavo.cli", command], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert ("plugin 'broken' (distribution 'octavo-broken-plugin') is skipped: entry point "
                "'octavo_broken_plugin.plugin' failed to import: ImportError: libacme.so"
                ) in proc.stderr
        out[command] = proc.stdout
    assert "  generate " in out["--help"] and "  serve " in out["--help"]
    assert "broken  (octavo-broken-plugin 0.1.0)  failed: entry point" in out["plugins"]
