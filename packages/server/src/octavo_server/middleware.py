"""ASGI middleware every request passes before a route: the API key, then the body's size and
read deadline. Both answer in OpenAI's error schema without calling the app."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from octavo_server.errors import error_response


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first ``name`` header's raw value (ASGI names are lowercase)."""
    return next((value for key, value in headers if key == name), None)


def _content_length(scope: Scope) -> int:
    value = _header(scope["headers"], b"content-length") or b"0"
    return int(value) if value.isdigit() else 0  # the HTTP server refuses a malformed one


class ApiKeyAuth:
    """401 unless ``Authorization: Bearer KEY`` carries the key, except on ``open_paths`` and
    for CORS preflights (OPTIONS).

    The header's raw bytes are compared with the key's UTF-8 bytes in constant time
    (``hmac.compare_digest``), so a non-ASCII key is sent as UTF-8; the scheme is
    case-insensitive, as HTTP's are.
    """

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.expected = api_key.encode("utf-8")
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] != "OPTIONS"
                and scope["path"] not in self.open_paths and not self._authorized(scope)):
            response = error_response(401, "a valid API key is required: send "
                                      "'Authorization: Bearer <key>'", code="invalid_api_key")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = _header(scope["headers"], b"authorization") or b""
        scheme, _, credentials = given.partition(b" ")
        matches = hmac.compare_digest(credentials.lstrip(b" "), self.expected)
        return matches and scheme.lower() == b"bearer"


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class BodyLimit:
    """Reads each request's body before the app does: 413 when it is larger than
    ``max_bytes`` (told by its Content-Length before anything is read, or counted as a
    chunked body arrives), 408 and a closed connection when it has not all arrived within
    ``timeout`` seconds of the headers. The app then reads the body as usual."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if _content_length(scope) > self.max_bytes:
                raise _TooLarge
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except _Disconnected:
            return
        except _TooLarge:
            # No "Connection: close": uvicorn discards the rest of the body, so a client that
            # writes it all before reading still gets this answer.
            await error_response(413, f"the request body is larger than {self.max_bytes} "
                                 "bytes (--max-request-body-bytes)",
                                 code="request_too_large")(scope, receive, send)
            return
        except asyncio.TimeoutError:
            await error_response(408, f"the request body did not arrive within {self.timeout} "
                                 "seconds (--body-timeout)", code="request_timeout",
                                 headers={"Connection": "close"})(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the whole body first, then the client's messages
    (``http.disconnect``)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
