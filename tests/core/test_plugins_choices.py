"""Named components: unknown names fail in one line before the model loads; choices are logged."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from octavo.cli import cli

pytestmark = pytest.mark.usefixtures("fresh_plugins")

MISSING_MODEL = "/nonexistent/model-folder"  # loading it would fail: errors must come first


@pytest.mark.parametrize("option, value, message", [
    ("--scheduler", "nope", "unknown scheduler 'nope' (--scheduler, OCTAVO_SCHEDULER); "
                            "installed: fcfs, priority"),
    ("--scheduler", "FCFS", "unknown scheduler 'FCFS'"),  # not lowercased behind anyone's back
    ("--kv-cache-manager", "nope", "unknown KV cache manager 'nope' (--kv-cache-manager, "
                                   "OCTAVO_KV_CACHE_MANAGER); installed: paged"),
    ("--attention-backend", "nope", "unknown attention backend 'nope' (--attention-backend, "
                                    "OCTAVO_ATTENTION_BACKEND); installed: torch"),
])
def test_unknown_component_is_a_one_line_usage_error_before_loading(option, value, message):
    result = CliRunner().invoke(cli, ["generate", "hi", "-m", MISSING_MODEL, option, value])
    assert result.exit_code == 2, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: {message}")
    assert MISSING_MODEL not in result.output


def test_a_plugins_mixed_case_name_is_found_as_written(monkeypatch, tiny_llama, caplog):
    from octavo import LLM
    from octavo.engine.scheduler import FCFSScheduler
    from octavo.plugins import get_plugin_manager

    get_plugin_manager().registry("register_schedulers").add(
        "MyFCFS", FCFSScheduler, "test", "test-dist")
    with caplog.at_level(logging.INFO):
        llm = LLM(str(tiny_llama), device="cpu", scheduler="MyFCFS", kv_cache_memory_gib=0.01)
    assert type(llm.engine.core.scheduler) is FCFSScheduler
    assert "scheduler 'MyFCFS' from test-dist (set by --scheduler / OCTAVO_SCHEDULER)" in (
        caplog.text)
    assert ("KV cache manager 'paged' from octavo-core (the default; --kv-cache-manager "
            "chooses another)") in caplog.text
    assert "attention backend 'cpu' for device=cpu" in caplog.text or (
        "attention backend 'torch' for device=cpu" in caplog.text)


@pytest.fixture
def octavo_log_levels(monkeypatch):
    """Restore the levels ``show_engine_logs`` sets, and the root logger's handlers."""
    from octavo.commands import OCTAVO_LOGGERS

    for name in OCTAVO_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    monkeypatch.setattr(logging.root, "level", logging.root.level)


def test_generate_shows_the_choices_at_info(tiny_llama, caplog, octavo_log_levels):
    result = CliRunner().invoke(cli, ["generate", "hi", "-m", str(tiny_llama), "--device", "cpu",
                                      "--max-tokens", "2", "--kv-cache-memory-gib", "0.01"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger("octavo").level == logging.INFO
    assert logging.getLogger("octavo_cpu").level == logging.INFO
    assert "scheduler 'fcfs' from octavo-core (the default" in caplog.text
    assert "attention backend " in caplog.text


def test_show_engine_logs_prints_to_stderr_when_nothing_else_does(octavo_log_levels):
    from octavo.commands import show_engine_logs

    logging.root.handlers = []
    show_engine_logs("warning")
    (handler,) = logging.root.handlers
    assert isinstance(handler, logging.StreamHandler) and logging.root.level == logging.WARNING
    assert logging.getLogger("octavo").level == logging.WARNING
