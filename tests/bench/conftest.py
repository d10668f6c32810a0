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


def _byte_level_tokens() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (a byte-level BPE vocabulary)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return [chr(b) for b in kept] + [chr(256 + i) for i in range(len(moved))]


def write_tiny_llama_gguf(path, *, seed: int = 0, hidden: int = 64, layers: int = 2,
                          heads: int = 4, kv_heads: int = 2, ffn: int = 128) -> None:
    """A random float32 Llama GGUF with a byte-level vocabulary (256 bytes, one merge, BOS and
    EOS: 259 tokens) that llama.cpp, transformers and Octavo all load."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = [*_byte_level_tokens(), "ab", "<s>", "</s>"]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(1024)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * 257 + [gguf.TokenType.CONTROL] * 2)
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(257)
    writer.add_eos_token_id(258)

    def add(name: str, *shape: int) -> None:  # numpy order: [out_features, in_features]
        data = rng.standard_normal(shape) / np.sqrt(shape[-1])
        writer.add_tensor(name, data.astype(np.float32))

    def ones(name: str) -> None:
        writer.add_tensor(name, np.ones(hidden, dtype=np.float32))

    kv = hidden // heads * kv_heads
    add("token_embd.weight", len(tokens), hidden)  # tied: no output.weight
    ones("output_norm.weight")
    for i in range(layers):
        ones(f"blk.{i}.attn_norm.weight")
        ones(f"blk.{i}.ffn_norm.weight")
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)),
                            ("attn_v", (kv, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))):
            add(f"blk.{i}.{name}.weight", *shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="session")
def tiny_llama_gguf(tmp_path_factory):
    """A random tiny Llama as a float32 GGUF file (see :func:`write_tiny_llama_gguf`)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    write_tiny_llama_gguf(path)
    return path
