"""``octavo plugins`` and plugin subcommands, through click's runner and the real console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from octavo.cli import cli
from octavo.plugins import DEFAULT_PLUGINS, REGISTRY_HOOKS, get_plugin_manager, reset_plugin_manager
from octavo.plugins.report import all_plugins

EXAMPLE_REGISTERED = {
    "register_attention_backends": ["example-sdpa"], "register_commands": ["example-registered"],
    "register_kv_cache_managers": ["example-paged"], "register_layer_ops": ["example-ops"],
    "register_models": ["OctavoExampleForCausalLM"],
    "register_quantization_methods": ["example_int8"], "register_schedulers": ["example-fcfs"],
    "register_swappers": ["example-host"], "register_weight_formats": ["*.npz"],
    "register_platforms": ["example-cpu"]}
EXAMPLE = {"name": "example", "distribution": "octavo-example-plugin", "version": "0.1.0",
           "status": "loaded", "hooks": sorted([*REGISTRY_HOOKS, "register_commands"]),
           "registered": EXAMPLE_REGISTERED}


pytestmark = pytest.mark.usefixtures("fresh_plugins")


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_plugins_lists_the_example_plugin():
    out = invoke("plugins")
    block = out[out.index("example  (octavo-example-plugin 0.1.0)\n"):].splitlines()
    block = block[1:1 + len(EXAMPLE["hooks"])]
    assert block == [f"    {hook}: {', '.join(EXAMPLE_REGISTERED[hook])}"
                     for hook in EXAMPLE["hooks"]]
    assert out.startswith("octavo.plugins.defaults  (octavo-core 0.1.0)\n"
                          "    register_attention_backends: torch\n")
    assert "    register_schedulers: fcfs, priority\n" in out


def test_plugins_shows_disabled_plugins_as_disabled(monkeypatch):
    monkeypatch.setenv("OCTAVO_DISABLE_PLUGINS", "example")
    out = invoke("plugins").splitlines()
    assert ("example  (octavo-example-plugin 0.1.0)  disabled: disabled by "
            "OCTAVO_DISABLE_PLUGINS") in out
    assert not any(line.startswith("    register_") and "example-sdpa" in line for line in out)


def test_plugins_json_matches_the_manager():
    data = json.loads(invoke("plugins", "--json"))
    pm = get_plugin_manager()
    assert data == [info.as_dict() for info in all_plugins(pm)]
    assert EXAMPLE in data
    assert data[0]["name"] == DEFAULT_PLUGINS[0]


def test_plugins_respects_the_allowlist(monkeypatch):
    monkeypatch.setenv("OCTAVO_PLUGINS", "")
    data = json.loads(invoke("plugins", "--json"))
    assert [p["name"] for p in data if p["status"] == "loaded"] == list(DEFAULT_PLUGINS)
    assert {"name": "example", "status": "disabled", "reason": "not in OCTAVO_PLUGINS"
            }.items() <= next(p for p in data if p["name"] == "example").items()
    result = CliRunner().invoke(cli, ["example-registered"])  # its command is gone too
    assert result.exit_code == 2 and "No such command 'example-registered'" in result.output


def test_plugin_command_follows_the_current_manager(monkeypatch):
    assert "example-registered" in invoke("--help")
    monkeypatch.setenv("OCTAVO_PLUGINS", "models")
    reset_plugin_manager()
    assert "example-registered" not in invoke("--help")
    assert "example-registered" not in cli.commands  # the group itself is never modified


def test_cli_is_a_click_group_importable_by_other_modules():
    assert isinstance(cli, click.Group)
    assert "plugins" in cli.commands
    assert invoke("--version").strip().endswith("0.1.0")


def console_script() -> str:
    path = shutil.which("octavo") or str(Path(sys.executable).parent / "octavo")
    assert os.access(path, os.X_OK), "the octavo console script is not installed"
    return path


@pytest.mark.parametrize("allow, expect_example", [(None, True), ("models", False)])
def test_console_script_plugins_json(allow, expect_example):
    env = {k: v for k, v in os.environ.items() if k != "OCTAVO_PLUGINS"}
    if allow is not None:
        env["OCTAVO_PLUGINS"] = allow
    proc = subprocess.run([console_script(), "plugins", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (EXAMPLE in data) is expect_example
    assert data[0]["name"] == DEFAULT_PLUGINS[0]
    if allow is not None:
        loaded = [p["name"] for p in data if p["status"] == "loaded"]
        assert loaded == [*DEFAULT_PLUGINS, "models"]
