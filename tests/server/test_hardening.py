"""What a hostile or careless client sends (issue 19): strings that are not Unicode, huge
bodies and prompts, unbounded fan-out, a full waiting queue, odd API keys. Each is answered
with a 4xx in OpenAI's schema naming its field, and the server keeps serving, idle after."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from octavo.cli import cli
from octavo_server.settings import ServerSettings

from .conftest import (
    MODEL,
    UNICODE_KEY,
    assert_error,
    assert_still_serving,
    post,
    scrape,
    start_server,
    tiny_model,
)

CHAT = '[{"role": "user", "content": "w1 w2"}]'
SURROGATE = "w1 \\ud800 w2"  # a lone surrogate as JSON spells it


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", f'{{"prompt": "{SURROGATE}"}}', "prompt"),
    ("/v1/completions", f'{{"prompt": ["w1", "{SURROGATE}"]}}', "prompt"),
    ("/v1/completions", f'{{"prompt": "w1", "stop": ["{SURROGATE}"]}}', "stop"),
    ("/v1/completions", f'{{"prompt": "w1", "model": "{SURROGATE}"}}', "model"),
    ("/v1/completions", f'{{"prompt": "w1", "user": "{SURROGATE}"}}', "user"),
    ("/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "{SURROGATE}"}}]}}',
     "messages[0].content"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", '
     f'"text": "{SURROGATE}"}}]}}]}}', "messages[0].content"),
    ("/tokenize", f'{{"prompt": "{SURROGATE}"}}', "prompt"),
    ("/tokenize", f'{{"messages": [{{"role": "system", "content": "{SURROGATE}"}}]}}',
     "messages[0].content"),
])
def test_a_lone_surrogate_is_a_400_naming_its_field(server, path, body, param):
    assert_error(post(server.base_url, path, body), 400, param, "surrogate")
    assert_still_serving(server.base_url)


def test_a_body_that_is_not_utf8_is_a_400(server):
    response = post(server.base_url, "/v1/completions", b'{"prompt": "w1 \xff\xfe"}')
    assert_error(response, 400, None, "")
    assert_still_serving(server.base_url)


# -- body size ---------------------------------------------------------------------------------
def test_a_20_mib_body_is_refused_with_413_by_the_default_limit(server):
    body = b'{"prompt": "w1", "padding": "' + b"x" * (20 * 2**20) + b'"}'
    error = assert_error(post(server.base_url, "/v1/completions", body), 413, None, "larger")
    assert error["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for start in range(0, len(body), 2**20):
            yield body[start:start + 2**20]

    chunked = httpx.post(f"{server.url}/completions", content=chunks(), timeout=30,
                         headers={"content-type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert_error(chunked, 413, None, "larger")
    assert_still_serving(server.base_url)


@pytest.fixture(scope="module")
def small_body_server(tiny_folder):
    background = start_server(tiny_model(tiny_folder), max_request_body_bytes=1000,
                              header_timeout=2.0, body_timeout=2.0)
    yield background
    background.stop()


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0
                ) -> tuple[bytes, float]:
    """Send ``head`` and ``body`` on a fresh connection, stop sending, and read until the
    server closes it: what came back, and how long the server took to close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        started, received = time.monotonic(), b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, time.monotonic() - started


def test_the_body_limit_holds_at_its_edge_and_before_the_body_arrives(small_body_server):
    base = small_body_server.base_url
    head, tail = b'{"prompt": "w1", "max_tokens": 2, "pad": "', b'"}'
    room = 1000 - len(head) - len(tail)
    assert post(base, "/v1/completions", head + b"x" * room + tail).status_code == 200
    over = post(base, "/v1/completions", head + b"x" * (room + 1) + tail)
    assert_error(over, 413, None, "larger than 1000 bytes")
    # A Content-Length over the limit is answered before a byte of the body is sent...
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n")
    answer, _ = raw_request(small_body_server.port, head)
    assert answer.startswith(b"HTTP/1.1 413") and b'"request_too_large"' in answer
    # ...and a chunked body as soon as it passes the limit, long before it ends.
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    answer, _ = raw_request(small_body_server.port, head, b"800\r\n" + b"x" * 0x800 + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 413")
    assert_still_serving(base)


# -- fan-out and the waiting queue -------------------------------------------------------------
def test_n_is_capped_by_max_n(tiny_folder):
    background = start_server(tiny_model(tiny_folder), max_n=4)
    try:
        started = time.monotonic()
        big = post(background.base_url, "/v1/completions", {"prompt": "w1", "n": 20000})
        assert_error(big, 400, "n", "n must be <= 4, got 20000")
        assert time.monotonic() - started < 5
        assert_error(post(background.base_url, "/v1/completions",
                          {"prompt": "w1", "n": 5, "best_of": 5}), 400, "n", "<= 4")
        assert_error(post(background.base_url, "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "w1"}], "n": 5}),
                     400, "n", "<= 4")
        ok = post(background.base_url, "/v1/completions", {"prompt": "w1", "n": 4,
                                                           "max_tokens": 2})
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 4
        n_max = background.app.openapi()["components"]["schemas"]["CompletionRequest"]
        assert n_max["properties"]["n"]["maximum"] == 4
        assert_still_serving(background.base_url)
    finally:
        background.stop()


LONG = {"model": MODEL, "prompt": "w1 w2", "max_tokens": 900, "temperature": 0,
        "ignore_eos": True, "stream": True}


def wait_for_waiting(base: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while scrape(base)["octavo_num_requests_waiting"] != count:
        assert time.monotonic() < deadline, scrape(base)
        time.sleep(0.01)


def test_the_waiting_limit_counts_sequences_and_the_incoming_request(tiny_folder):
    """One sequence runs at a time and four may wait: a request's prompts x n count, before
    it is admitted."""
    background = start_server(tiny_model(tiny_folder, max_waiting_requests=4, max_num_seqs=1))
    base = background.base_url
    try:
        never = post(base, "/v1/completions", {"prompt": "w1", "n": 5})
        assert_error(never, 400, "n", "at most 4")
        too_many_prompts = post(base, "/v1/completions", {"prompt": ["w1"] * 5})
        assert_error(too_many_prompts, 400, "prompt", "at most 4")
        with httpx.Client(timeout=60) as http, \
                http.stream("POST", f"{base}/v1/completions", json=LONG) as running:
            lines = running.iter_lines()
            next(lines)  # it runs; everything after it waits
            with http.stream("POST", f"{base}/v1/completions", json={**LONG, "n": 3}) as three:
                assert three.status_code == 200
                wait_for_waiting(base, 3)  # the unforked siblings count
                for body in ({"prompt": "w1", "n": 2}, {"prompt": ["w1", "w2"]}):
                    full = post(base, "/v1/completions", body)
                    assert_error(full, 503, None, "3 sequences wait and this request adds 2")
                    assert full.json()["error"]["code"] == "queue_full"
                    assert full.headers["retry-after"] == "1"
                chat = post(base, "/v1/chat/completions", {
                    "messages": [{"role": "user", "content": "w1"}], "n": 2})
                assert_error(chat, 503, None, "busy")
                with http.stream("POST", f"{base}/v1/completions", json=LONG) as fourth:
                    assert fourth.status_code == 200  # 3 + 1 sequences: just fits
                    wait_for_waiting(base, 4)
                    assert_error(post(base, "/v1/completions", {"prompt": "w1"}), 503, None,
                                 "4 sequences wait and this request adds 1")
        assert_still_serving(base)
    finally:
        background.stop()


# -- API keys ----------------------------------------------------------------------------------
def test_an_empty_api_key_is_a_usage_error_at_start_up(monkeypatch):
    with pytest.raises(ValidationError, match="must not be empty"):
        ServerSettings(api_key="")
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "--api-key", "", "--model", "/no/such/model"])
    assert result.exit_code == 2
    assert "--api-key (OCTAVO_API_KEY): must not be empty" in result.output
    monkeypatch.setenv("OCTAVO_API_KEY", "")
    result = runner.invoke(cli, ["serve", "--model", "/no/such/model"])
    assert result.exit_code == 2 and "must not be empty" in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1
    for unsendable in (" key", "key\n", "k\x00y"):
        with pytest.raises(ValidationError):
            ServerSettings(api_key=unsendable)


def test_a_non_ascii_api_key_is_compared_as_utf8_bytes(unicode_key_server):
    base = unicode_key_server.base_url
    utf8 = {"authorization": b"Bearer " + UNICODE_KEY.encode("utf-8")}
    assert post(base, "/v1/completions", {"prompt": "w1", "max_tokens": 1}, utf8).status_code \
        == 200
    lowercase_scheme = {"authorization": b"bearer " + UNICODE_KEY.encode("utf-8")}
    assert httpx.get(f"{base}/v1/models", headers=lowercase_scheme).status_code == 200
    for wrong in (b"Bearer " + UNICODE_KEY.encode("latin-1", "replace"),
                  b"Bearer " + UNICODE_KEY.encode("utf-8")[:-1], b"Basic abc", b""):
        refused = post(base, "/v1/completions", {"prompt": "w1"}, {"authorization": wrong})
        error = assert_error(refused, 401, None, "API key")
        assert error["code"] == "invalid_api_key"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert_still_serving(base, utf8)


# -- huge prompts ------------------------------------------------------------------------------
class HealthProbe(threading.Thread):
    """Times ``/health`` over and over until stopped: the slowest answer."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{base_url}/health"
        self.slowest = 0.0
        self.count = 0
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self.done.is_set():
                started = time.monotonic()
                assert http.get(self.url).status_code == 200
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.count += 1
                time.sleep(0.005)

    def stop(self) -> tuple[float, int]:
        self.done.set()
        self.join()
        return self.slowest, self.count


def test_a_10_mb_prompt_is_refused_before_tokenizing_and_health_keeps_answering(server):
    huge = "w5 " * (10 * 10**6 // 3)
    probe = HealthProbe(server.base_url)
    started = time.monotonic()
    refused = post(server.base_url, "/v1/completions", {"prompt": huge, "max_tokens": 1})
    chat = post(server.base_url, "/v1/chat/completions",
                {"messages": [{"role": "user", "content": huge}]})
    tokenized = post(server.base_url, "/tokenize", {"prompt": huge})
    elapsed = time.monotonic() - started
    slowest, count = probe.stop()
    assert count >= 3 and slowest < 1.0, (slowest, count, elapsed)
    error = assert_error(refused, 400, "prompt", "bytes of text")
    assert error["code"] == "context_length_exceeded"
    assert_error(chat, 400, "messages", "bytes of text")
    assert_error(tokenized, 400, "prompt", "bytes of text")
    assert_still_serving(server.base_url)


def test_a_long_prompt_is_tokenized_off_the_event_loop(tiny_folder):
    """With the byte check lifted, a 2 MB prompt is tokenized (and then refused: it does not
    fit the context) while /health keeps answering."""
    background = start_server(tiny_model(tiny_folder), max_prompt_bytes=10**9)
    try:
        probe = HealthProbe(background.base_url)
        started = time.monotonic()
        refused = post(background.base_url, "/v1/completions",
                       {"prompt": "w5 " * (2 * 10**6 // 3), "max_tokens": 1})
        elapsed = time.monotonic() - started
        slowest, count = probe.stop()
        error = assert_error(refused, 400, "prompt", "context")
        assert error["code"] == "context_length_exceeded"
        assert slowest < max(0.5, elapsed / 3), (slowest, count, elapsed)
        assert_still_serving(background.base_url)
    finally:
        background.stop()
