"""``octavo serve`` as a process: startup log, serving, and a clean SIGTERM (exit 0)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import httpx
from click.testing import CliRunner

from octavo.cli import cli

from .conftest import MODEL, serve_log_until, start_server, tiny_model


def test_serve_is_a_plugin_command_with_every_engine_option():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--model", "--served-model-name", "--host", "--port", "--api-key",
                   "--max-waiting-requests", "--block-size", "--max-num-seqs", "--device",
                   "--enable-prefix-caching"):
        assert option in result.output


def test_bad_options_are_usage_errors(monkeypatch):
    monkeypatch.setenv("OCTAVO_PORT", "99999")
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 2 and "port" in result.output


class StreamReader(threading.Thread):
    """Streams a long greedy completion in a thread, collecting its ``data:`` payloads until
    the stream ends or the server drops it (then the last entry is ``(dropped)``)."""

    def __init__(self, url: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url = f"{url}/completions"
        self.body = {"model": MODEL, "prompt": "w1 w2", "max_tokens": max_tokens,
                     "temperature": 0, "ignore_eos": True, "stream": True}
        self.lines: list[str] = []
        self.first = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.lines.append(line[len("data: "):])
                        self.first.set()
        except httpx.RemoteProtocolError:
            self.lines.append("(dropped)")


def test_serve_logs_what_it_loaded_and_finishes_requests_on_sigterm(tiny_folder):
    command = [sys.executable, "-m", "octavo.cli", "serve", "--model", str(tiny_folder),
               "--served-model-name", MODEL, "--port", "0", "--device", "cpu",
               "--block-size", "4", "--num-gpu-blocks-override", "300"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        text, url = serve_log_until(process, "serving")
        assert f"loaded {tiny_folder} as 'tiny'" in text
        assert "KV cache: 300 blocks of 4 tokens = 1200 tokens" in text

        reader = StreamReader(url, max_tokens=200)
        assert reader.first.wait(30)
        process.send_signal(signal.SIGTERM)
        in_flight = len(reader.lines)
        reader.join(60)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    lines = reader.lines
    assert in_flight < 200 and lines[-1] == "[DONE]"
    assert json.loads(lines[-2])["choices"][0]["finish_reason"] == "length"
    assert sum(1 for line in lines[:-1] if json.loads(line)["choices"][0]["text"]) > 0
    assert len(lines) - 1 == 200  # one chunk per token: the request ran to its end


def test_shutdown_aborts_what_outlives_the_grace_period(tiny_folder):
    served = tiny_model(tiny_folder, num_gpu_blocks_override=300)
    background = start_server(served, shutdown_timeout=0.3)
    reader = StreamReader(background.url, max_tokens=1000)
    plain: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: plain.append(httpx.post(
        f"{background.url}/completions", json={**reader.body, "stream": False}, timeout=60)))
    waiter.start()
    try:
        assert reader.first.wait(30)
        deadline = time.monotonic() + 10
        while served.stats().num_running < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served.stats().num_running == 2
    finally:
        started = time.monotonic()
        background.stop()
        reader.join(30)
        waiter.join(30)
    assert time.monotonic() - started < 5
    lines = reader.lines
    assert lines[-1] == "[DONE]" and len(lines) < 1000
    assert json.loads(lines[-2])["choices"][0]["finish_reason"] == "abort"
    (response,) = plain
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "abort" and choice["text"]
    engine = served.llm.engine
    assert not engine.has_unfinished_requests()
    kv = engine.core.scheduler.kv_cache
    assert kv.num_free_blocks == kv.num_blocks
