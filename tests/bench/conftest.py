"""A small OpenAI-style streaming server with known timings and scripted faults.

Built on asyncio streams (no web framework), it serves ``GET /v1/models`` and streaming
``POST /v1/completions`` / ``/v1/chat/completions``: after ``ttft`` seconds the first chunk,
then one chunk every ``itl`` seconds, ``max_tokens`` chunks in all, a usage chunk and
``[DONE]``. Request ``i`` (in arrival order) behaves as ``modes[i % len(modes)]``:

- ``ok``: the stream above;
- ``http500``: a 500 response with an OpenAI error body;
- ``drop``: two chunks, then the connection closes without ``[DONE]``;
- ``error_event``: one chunk, then an ``{"error": ...}`` event;
- ``hang``: headers, then nothing (the client must time out).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

import pytest


@dataclass
class FakeOpenAIServer:
    ttft: float = 0.05
    itl: float = 0.02
    modes: tuple[str, ...] = ("ok",)
    bodies: list[dict] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOpenAIServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve():
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode().split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {k.lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in header_lines if line)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            if method == "GET" and path == "/v1/models":
                await self._json(writer, 200, {"object": "list", "data": [{"id": "fake-model"}]})
            elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
                await self._complete(writer, json.loads(body), chat="chat" in path)
            else:
                await self._json(writer, 404, {"error": {"message": f"no route {path}"}})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _json(self, writer, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()

    async def _complete(self, writer, body: dict, chat: bool) -> None:
        mode = self.modes[len(self.bodies) % len(self.modes)]
        self.bodies.append(body)
        if mode == "http500":
            await self._json(writer, 500, {"error": {"message": "boom", "type": "server_error"}})
            return
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            if mode == "hang":
                await asyncio.sleep(3600)
            n = {"ok": body["max_tokens"], "drop": 2, "error_event": 1}[mode]
            await asyncio.sleep(self.ttft)
            for i in range(n):
                if i:
                    await asyncio.sleep(self.itl)
                choice = ({"index": 0, "delta": {"content": f" t{i}"}} if chat
                          else {"index": 0, "text": f" t{i}"})
                await self._event(writer, {"object": "text_completion", "choices": [choice]})
            if mode == "error_event":
                await self._event(writer, {"error": {"message": "model crashed"}})
            elif mode == "ok":
                await self._event(writer, {"choices": [], "usage": {
                    "prompt_tokens": len(body.get("prompt", "")), "completion_tokens": n}})
                writer.write(b"data: [DONE]\n\n")
                await writer.drain()
        finally:
            self.in_flight -= 1

    @staticmethod
    async def _event(writer, payload: dict) -> None:
        writer.write(f"data: {json.dumps(payload)}\n\n".encode())
        await writer.drain()


@pytest.fixture
def fake_server():
    servers = []

    def start(**kwargs) -> FakeOpenAIServer:
        server = FakeOpenAIServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
