"""Start ``octavo serve`` from an installed venv, list the models, chat once, stop it.

Used by scripts/check-wheels: ``python serve_smoke.py VENV_BIN_OCTAVO LOG EXPECTED_LOG_RE``.
Exits non-zero (printing the server's log) when the server dies, does not answer within the
time limit, answers wrongly, or its log lacks the expected line. Standard library only, so any
Python runs it.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_LIMIT_S = 600
DEMO = "SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_models(base: str, server: subprocess.Popen) -> dict:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"octavo serve exited with status {server.returncode}")
        try:
            return json.load(urllib.request.urlopen(f"{base}/models", timeout=5))
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"octavo serve did not answer /v1/models within {START_LIMIT_S} s")


def chat(base: str, model: str) -> str:
    body = json.dumps({"model": model, "max_tokens": 4, "temperature": 0,
                       "messages": [{"role": "user", "content": "Hi"}]}).encode()
    request = urllib.request.Request(f"{base}/chat/completions", body,
                                     {"Content-Type": "application/json"})
    reply = json.load(urllib.request.urlopen(request, timeout=300))
    return reply["choices"][0]["message"]["content"]


def main(octavo: str, log_path: str, expected: str) -> int:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    log = Path(log_path)
    with log.open("w") as out:
        server = subprocess.Popen([octavo, "serve", "--port", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        models = wait_for_models(base, server)
        names = [m["id"] for m in models["data"]]
        if names != [DEMO]:
            raise RuntimeError(f"/v1/models lists {names}, expected [{DEMO!r}]")
        text = chat(base, DEMO)
        if not text:
            raise RuntimeError("the chat completion came back empty")
    except Exception as exc:  # noqa: BLE001 - any failure is reported with the log
        server.kill()
        server.wait()
        print(log.read_text(), file=sys.stderr)
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    server.terminate()
    server.wait(timeout=60)
    if not re.search(expected, log.read_text()):
        print(log.read_text(), file=sys.stderr)
        print(f"FAILED: the server's log has no line matching {expected!r}", file=sys.stderr)
        return 1
    print(f"served {DEMO}: {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
