"""``octavo serve -tp 2`` end to end: a killed worker makes the server answer 503 and exit with
status 1, and no process of it remains (slow: a server and two workers start)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from .conftest import wait_gone

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_with_two_ranks_exits_1_when_a_worker_dies(llama, tmp_path):
    folder, _ = llama
    port = _free_port()
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "octavo.cli", "serve", "--model", str(folder),
             "--served-model-name", "tiny", "--port", str(port), "--device", "cpu",
             "--dtype", "float32", "--block-size", "4", "--num-gpu-blocks-override", "64",
             "-tp", "2"], stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    if httpx.get(base + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(1)
            body = {"model": "tiny", "prompt": "w1 w2", "max_tokens": 2}
            assert httpx.post(base + "/v1/completions", json=body, timeout=60).status_code == 200
            workers = [p for p in psutil.Process(server.pid).children()
                       if "spawn_main" in " ".join(p.cmdline())
                       and "resource_tracker" not in " ".join(p.cmdline())]
            assert len(workers) == 2
            os.kill(workers[1].pid, signal.SIGKILL)
            response = httpx.post(base + "/v1/completions", content=json.dumps(body), timeout=60,
                                  headers={"content-type": "application/json"})
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "engine_dead"
            assert server.wait(timeout=60) == 1
            assert wait_gone([p.pid for p in workers]) == []
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
