"""Connections that stall or pile up (issue 19, item 11): a request's headers and body each
have a deadline, and connections beyond ``max_connections`` are answered 503 and closed."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from .conftest import assert_error, assert_still_serving, start_server, tiny_model
from .test_hardening import raw_request

POST_HEAD = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100\r\n\r\n")


@pytest.fixture(scope="module")
def quick_server(tiny_folder):
    background = start_server(tiny_model(tiny_folder), header_timeout=1.0, body_timeout=1.0)
    yield background
    background.stop()


def test_a_connection_that_stalls_mid_body_gets_408_and_is_closed(quick_server):
    answer, waited = raw_request(quick_server.port, POST_HEAD, b'{"prompt": "w1"')
    assert 0.5 < waited < 4, waited
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and "--body-timeout" in error["message"]
    assert_still_serving(quick_server.base_url)


@pytest.mark.parametrize("sent", [b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_that_stalls_before_its_headers_end_is_closed(quick_server, sent):
    answer, waited = raw_request(quick_server.port, sent)
    assert answer == b"" and 0.5 < waited < 4, (answer, waited)
    assert_still_serving(quick_server.base_url)


def test_a_keep_alive_connection_stalling_in_its_next_request_is_closed(quick_server):
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    answer, waited = raw_request(quick_server.port, request + b"GET /health HTTP/1.1\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1
    assert waited < 4
    assert_still_serving(quick_server.base_url)


def test_connections_beyond_the_limit_get_503_with_retry_after(tiny_folder):
    background = start_server(tiny_model(tiny_folder), max_connections=3, header_timeout=30.0)
    idle = []
    try:
        for _ in range(3):
            idle.append(socket.create_connection(("127.0.0.1", background.port)))
        time.sleep(0.2)  # let the server register them
        refused = httpx.get(f"{background.base_url}/health", timeout=10)
        error = assert_error(refused, 503, None, "too many open connections")
        assert error["code"] == "too_many_connections"
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
    finally:
        for sock in idle:
            sock.close()
    try:
        deadline = time.monotonic() + 5
        while httpx.get(f"{background.base_url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert_still_serving(background.base_url)
    finally:
        background.stop()
