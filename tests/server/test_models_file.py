"""``octavo serve`` with several models: ``--model`` repeated and the TOML models file."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from octavo.cli import cli
from octavo_server.models_file import ModelsFileError, read_models_file, specs_from_options

from .conftest import post, serve_log_until


def write(tmp_path, text: str):
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_a_models_file_gives_each_model_its_options_aliases_and_pin(tmp_path):
    path = write(tmp_path, """
memory_budget_gib = 2.5
idle_unload_s = 60
[defaults]
block_size = 8
[[models]]
name = "a"
path = "/models/a"
aliases = ["first", "default"]
pinned = true
preload = true
memory_gib = 0.5
block_size = 32
[[models]]
path = "/models/b"
""")
    config = read_models_file(path, {"device": "cpu", "block_size": 4})
    assert (config.memory_budget_gib, config.idle_unload_s) == (2.5, 60)
    a, b = config.specs
    assert (a.name, a.model, a.aliases, a.pinned, a.preload, a.memory_gib) == (
        "a", "/models/a", ("first", "default"), True, True, 0.5)
    assert a.options == {"device": "cpu", "block_size": 32}  # its own key wins
    assert (b.name, b.pinned, b.options) == ("/models/b", False, {"device": "cpu",
                                                                  "block_size": 8})


@pytest.mark.parametrize("text, words", [
    ("budget = 1\n[[models]]\npath = 'x'", "unknown keys ['budget']"),
    ("[[models]]\nname = 'a'", "models[0]: needs a path"),
    ("[[models]]\npath = 'x'\nblok_size = 4", "models[0]: unknown engine options"),
    ("[[models]]\npath = 'x'\nblock_size = -4", "models[0]"),
    ("[[models]]\npath = 'x'\naliases = 'y'", "aliases must be a list"),
    ("memory_budget_gib = -1\n[[models]]\npath = 'x'", "memory_budget_gib must be a positive"),
    ("[[models]\npath = 'x'", "models.toml"),  # not TOML
    ("", "no [[models]]"),
])
def test_a_bad_models_file_says_where(tmp_path, text, words):
    with pytest.raises(ModelsFileError, match=re.escape(words)):
        read_models_file(write(tmp_path, text), {})


def test_served_model_names_pair_with_models_in_order():
    specs = specs_from_options(["/a", "/b"], ["x", "y"], {"device": "cpu"})
    assert [(s.name, s.model, s.options) for s in specs] == [
        ("x", "/a", {"device": "cpu"}), ("y", "/b", {"device": "cpu"})]
    assert [s.name for s in specs_from_options(["/a", "/b"], [], {})] == ["/a", "/b"]
    with pytest.raises(ModelsFileError, match="2 --model but 1 --served-model-name"):
        specs_from_options(["/a", "/b"], ["x"], {})


@pytest.mark.parametrize("args, words", [
    (["--model", "/a", "--model", "/b", "--served-model-name", "x"], "2 --model but 1"),
    (["--model", "/a", "--model", "/a"], "already served"),
    (["--models-file", "/no/such/models.toml"], "/no/such/models.toml"),
])
def test_bad_model_lists_are_usage_errors_before_anything_loads(args, words):
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert words in result.output


def test_serve_two_models_from_the_command_line(tiny_folder, tmp_path):
    path = write(tmp_path, f"""
[[models]]
name = "pinned-tiny"
path = "{tiny_folder}"
pinned = true
preload = true
""")
    command = [sys.executable, "-m", "octavo.cli", "serve", "--model", str(tiny_folder),
               "--served-model-name", "lazy-tiny", "--models-file", str(path), "--port", "0",
               "--device", "cpu", "--block-size", "4", "--num-gpu-blocks-override", "300",
               "--memory-budget-gib", "4", "--api-key", "k"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        text, url = serve_log_until(process, "startup complete")
        assert "model 'lazy-tiny'" in text and "loaded on first request" in text
        assert "loading 'pinned-tiny'" in text and "(preload;" in text
        auth = {"Authorization": "Bearer k"}
        models = httpx.get(f"{url}/models", headers=auth, timeout=30).json()["data"]
        assert {m["id"]: (m["state"], m["pinned"]) for m in models} == {
            "pinned-tiny": ("loaded", True), "lazy-tiny": ("unloaded", False)}
        base = url.removesuffix("/v1")
        answer = post(base, "/v1/completions", {"model": "lazy-tiny", "prompt": "w1 w2",
                                                "max_tokens": 3}, auth)
        assert answer.status_code == 200, answer.text
        models = httpx.get(f"{url}/models", headers=auth, timeout=30).json()["data"]
        assert all(m["state"] == "loaded" for m in models)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture
def managers(monkeypatch) -> list:
    """The managers ``octavo serve`` would serve (instead of serving them)."""
    import octavo_server.cli

    served = []
    monkeypatch.setattr(octavo_server.cli, "run_server", lambda manager, _: served.append(
        manager))
    return served


def test_one_model_stays_as_it_was_unless_budget_or_idle_unload_are_given(tiny_folder,
                                                                          managers):
    engine = ["--device", "cpu", "--block-size", "4", "--num-gpu-blocks-override", "64"]
    for extra in ([], ["--idle-unload-s", "30"]):
        result = CliRunner().invoke(cli, ["serve", "--model", str(tiny_folder),
                                          "--served-model-name", "t", *engine, *extra])
        assert result.exit_code == 0, result.output
    eager, managed = managers
    (model,) = eager.configured()
    assert (model.name, model.state.value, model.spec.pinned) == ("t", "loaded", True)
    (model,) = managed.configured()
    assert (model.name, model.state.value, model.spec.pinned) == ("t", "unloaded", False)
    assert managed.engines.idle_unload_s == 30 and model.spec.options["block_size"] == 4
    result = CliRunner().invoke(cli, ["serve", "--model", "/a", "--model", "/b",
                                      "--served-model-name", "a", "--served-model-name", "b",
                                      "--memory-budget-gib", "2"])
    assert result.exit_code == 0, result.output
    assert [m.name for m in managers[-1].configured()] == ["a", "b"]
    assert managers[-1].engines.memory_budget_bytes == 2 << 30
