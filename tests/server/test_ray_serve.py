"""Replicas behind one endpoint on Ray Serve (docs/distributed.md, "Replicas with Ray Serve").

The slow tests start a real Ray on this machine, in a process of their own (its own session,
so every Ray process it starts can be found and checked gone afterwards): ``octavo serve
--ray-replicas 2``, and ``serve run`` with a config file naming ``build_app``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import aclosing, suppress

import httpx
import pytest
from click.testing import CliRunner
from starlette.responses import StreamingResponse

from octavo.cli import cli
from octavo_server.forwarding import ForwardedRequest, call_app, routing_text

REPLICA = "x-octavo-replica"
ENGINE_FLAGS = ["--device", "cpu", "--block-size", "4", "--num-gpu-blocks-override", "256",
                "--max-num-seqs", "64"]
START_TIMEOUT = 240.0  # Ray, its proxy, then each replica imports torch


# --- without Ray -------------------------------------------------------------------------

def test_routing_text_is_the_prompt_prefix_the_replica_will_see():
    assert routing_text("/v1/completions", b'{"prompt": "abcdef"}', 4) == "abcd"
    assert routing_text("/v1/completions", b'{"prompt": ["first", "second"]}', 99) == "first"
    assert routing_text("/v1/completions", b'{"prompt": [5, 6, 7]}', 99) == "5 6 7"
    one_turn = routing_text("/v1/chat/completions", b'{"messages": [{"role": "system", '
                            b'"content": "be brief"}]}', 99)
    two_turns = routing_text("/v1/chat/completions", b'{"messages": [{"role": "system", '
                             b'"content": "be brief"}, {"role": "user", "content": [{"type": '
                             b'"text", "text": "hi"}]}]}', 99)
    assert one_turn == "system: be brief" and two_turns == "system: be brief\nuser: hi"
    assert routing_text("/metrics", b"", 99) == "/metrics"  # never empty
    assert routing_text("/v1/completions", b"not json", 99) == "/v1/completions"
    assert routing_text("/v1/completions", b'{"prompt": ""}', 99) == "/v1/completions"


def _request(path: str = "/") -> ForwardedRequest:
    return ForwardedRequest("POST", path, b"a=1", [(b"x-in", b"1")], b"body", "prompt")


def test_call_app_streams_the_answer_and_tells_the_app_when_the_client_left():
    seen: dict = {}

    async def app(scope, receive, send):
        seen["scope"] = scope
        seen["body"] = (await receive())["body"]

        async def chunks():
            for i in range(100):
                yield f"chunk{i};"
                await asyncio.sleep(0.01)

        try:
            await StreamingResponse(chunks(), status_code=201,
                                    headers={"x-out": "2"})(scope, receive, send)
        finally:
            seen["ended"] = True

    async def read(limit: int) -> list:
        items = []
        async with aclosing(call_app(app, _request("/p"), [(b"x-extra", b"3")])) as answer:
            async for item in answer:
                items.append(item)
                if len(items) == limit:
                    break
        return items

    status, headers = asyncio.run(read(3))[0]
    assert status == 201 and (b"x-out", b"2") in headers and headers[-1] == (b"x-extra", b"3")
    assert seen["scope"]["path"] == "/p" and seen["scope"]["query_string"] == b"a=1"
    assert (b"x-in", b"1") in seen["scope"]["headers"] and seen["body"] == b"body"
    assert seen["ended"]  # the early close ended the response (a disconnect)
    whole = asyncio.run(read(1000))
    assert b"".join(whole[1:]) == "".join(f"chunk{i};" for i in range(100)).encode()


def test_ray_replicas_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # ``import ray`` fails as if absent
    monkeypatch.delitem(sys.modules, "octavo_server.ray_serve", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--ray-replicas", "2"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "pip install 'octavo-server[ray]'" in line


@pytest.mark.parametrize("args", [["--ray-replicas", "0"], ["--ray-replicas", "2", "-m", "a",
                                                           "-m", "b"],
                                  ["--ray-replicas", "2", "--port", "0"],
                                  ["--ray-replicas", "2", "--idle-unload-s", "5"]])
def test_ray_replicas_usage_errors(args):
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2, result.output


def test_replica_options_map_onto_ray_serve_deployment_options():
    pytest.importorskip("ray.serve")
    from ray.serve.request_router import RequestRouter

    from octavo_server.ray_serve import PREFIX_ROUTER, ReplicaOptions

    fixed = ReplicaOptions(num_replicas=3).deployment_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    router = fixed["request_router_config"]
    assert issubclass(router.get_request_router_class(), RequestRouter)
    assert router.request_router_class == PREFIX_ROUTER
    scaled = ReplicaOptions(min_replicas="1", max_replicas="4").deployment_options()
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}
    assert "num_replicas" not in scaled
    with pytest.raises(ValueError, match="not both"):
        ReplicaOptions(num_replicas=2, max_replicas=4)
    with pytest.raises(ValueError, match="exceed"):
        ReplicaOptions(min_replicas=5, max_replicas=4)


def test_build_app_refuses_unknown_or_bad_options():
    pytest.importorskip("ray.serve")
    from octavo_server.ray_serve import build_app

    with pytest.raises(TypeError, match="unknown engine options"):
        build_app({"model": "m", "num_replica": "2"})
    with pytest.raises(ValueError, match="max_num_seqs"):
        build_app({"model": "m", "max_num_seqs": "lots"})
    assert build_app({"model": "m", "num_replicas": "2", "max_num_seqs": "8"}) is not None


# --- a real Ray ----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_sigint() -> None:
    """Ctrl-C's default in the child, even when this process ignores it (run in the
    background)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


class RayProcess:
    """A command that starts Ray, in a session of its own, and logs ``ready`` once every
    replica is up (None: once /health answers); stopped by ``stop_signal``, after which
    nothing of that session may remain."""

    def __init__(self, command: list[str], port: int, ready: str | None, stop_signal: int,
                 cwd=None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # The torch attention backend: replicas must not wait on a build of the CPU kernel
        # (another process may be compiling it); what is tested here is the serving.
        env["OCTAVO_PLUGINS"] = "models,server"
        self.stop_signal = stop_signal
        self.ready_line = ready
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(command, start_new_session=True, env=env, cwd=cwd,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, preexec_fn=_default_sigint)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()

    def _read(self, ready: str | None) -> None:
        for line in self.process.stderr:  # read it all: a full pipe would block Ray's logs
            self.lines.append(line)
            if ready is not None and ready in line:
                self.ready.set()

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.ready.wait(1) or self._healthy()):
            assert self.process.poll() is None, "".join(self.lines[-40:])
            assert time.monotonic() < deadline, f"not serving within {START_TIMEOUT} s"
        assert httpx.get(f"{self.url}/health", timeout=30).status_code == 200

    def _healthy(self) -> bool:
        if self.ready_line is not None:
            return False
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> tuple[int | None, list[int]]:
        """The exit status and the session's processes still alive 20 s after it (killed)."""
        sid = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        deadline = time.monotonic() + 20
        while (left := _session_pids(sid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:  # only this session's: what this test started
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return code, left


async def _completions(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/v1/completions", json=body)
                                      for body in bodies))


def _words(n: int, start: int = 0) -> str:
    return " ".join(f"w{(start + i) % 97}" for i in range(n))


@pytest.mark.slow
def test_two_replicas_behind_one_endpoint(tiny_folder):
    port = _free_port()
    command = [sys.executable, "-m", "octavo.cli", "serve", "--ray-replicas", "2",
               "--model", str(tiny_folder), "--served-model-name", "tiny",
               "--port", str(port), *ENGINE_FLAGS]
    served = RayProcess(command, port, "serving on Ray Serve", signal.SIGTERM)
    try:
        served.wait_until_serving()
        models = httpx.get(f"{served.url}/v1/models", timeout=30)
        assert models.status_code == 200 and models.json()["data"][0]["id"] == "tiny"

        # 64 concurrent requests with unrelated prompts: all answered, by both replicas
        spread = [{"model": "tiny", "prompt": _words(8, start=i * 13), "max_tokens": 4,
                   "ignore_eos": True} for i in range(64)]
        answers = asyncio.run(_completions(served.url, spread))
        assert [a.status_code for a in answers] == [200] * 64
        assert all(a.json()["usage"]["completion_tokens"] == 4 for a in answers)
        by_replica = collections.Counter(a.headers[REPLICA] for a in answers)
        assert len(by_replica) == 2, by_replica

        # a long shared prefix: the first request picks a replica, the rest follow it
        prefix = _words(300, start=50)
        first = asyncio.run(_completions(served.url, [
            {"model": "tiny", "prompt": f"{prefix} w1", "max_tokens": 4}]))[0]
        shared = asyncio.run(_completions(served.url, [
            {"model": "tiny", "prompt": f"{prefix} w{i}", "max_tokens": 4} for i in range(2, 10)]))
        assert {a.headers[REPLICA] for a in shared} == {first.headers[REPLICA]}

        # streaming, chat, /metrics through the endpoint
        with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=60, json={
                "model": "tiny", "messages": [{"role": "user", "content": "w1 w2"}],
                "max_tokens": 4, "stream": True}) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data:")]
        assert stream.status_code == 200 and REPLICA in stream.headers
        assert lines[-1] == "data: [DONE]" and len(lines) >= 3
        metrics = httpx.get(f"{served.url}/metrics", timeout=30)
        assert metrics.status_code == 200 and REPLICA in metrics.headers
        assert 'octavo_generation_tokens_total{model_name="tiny"}' in metrics.text
        admin = httpx.post(f"{served.url}/admin/models/tiny/unload", timeout=30)
        assert admin.status_code == 403  # it would act on one replica only
    finally:
        code, left = served.stop()
    assert code == 0 and left == []


@pytest.mark.slow
def test_serve_run_with_the_application_builder(tiny_folder, tmp_path):
    port = _free_port()
    (tmp_path / "octavo.yaml").write_text(f"""\
http_options:
  host: 127.0.0.1
  port: {port}
applications:
  - name: octavo
    route_prefix: /
    import_path: octavo_server.ray_serve:build_app
    args:
      model: {tiny_folder}
      served_model_name: tiny
      num_replicas: 1
      device: cpu
      num_gpu_blocks_override: 256
""")
    serve_command = shutil.which("serve")
    assert serve_command, "Ray Serve's `serve` command is not on PATH"
    served = RayProcess([serve_command, "run", "octavo.yaml"], port, None, signal.SIGINT,
                        cwd=tmp_path)
    try:
        served.wait_until_serving()
        (answer,) = asyncio.run(_completions(served.url, [
            {"model": "tiny", "prompt": "w1 w2", "max_tokens": 4}]))
        assert answer.status_code == 200 and REPLICA in answer.headers
    finally:
        code, left = served.stop()
    assert code is not None and left == []
