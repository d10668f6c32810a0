"""uvicorn's h11 protocol with the two guards uvicorn lacks: a deadline for a request's
headers, and a cap on open connections answered in OpenAI's error schema."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from octavo_server.errors import error_response
from octavo_server.settings import ServerSettings

_SERVING = (h11.SEND_RESPONSE, h11.SEND_BODY)  # h11's state while a request is answered


async def _too_many_connections(scope, receive, send) -> None:
    response = error_response(503, "the server has too many open connections; retry later",
                              code="too_many_connections", headers={"Connection": "close"})
    await response(scope, receive, send)


class GuardedH11Protocol(H11Protocol):
    """A connection must send each request's headers within ``header_timeout`` seconds of
    opening (or of its previous response), else it is closed: uvicorn arms no timer for a
    client that sends part of its headers, or nothing, and stalls. A connection opened while
    ``max_connections`` are open is answered 503 (``Retry-After``) and closed."""

    def __init__(self, *args: Any, header_timeout: float, max_connections: int | None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self.app = _too_many_connections
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.our_state in _SERVING:  # a request's headers arrived
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.our_state not in _SERVING:
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._cancel_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(settings: ServerSettings):
    """The ``http`` protocol factory to give ``uvicorn.Config``."""
    return functools.partial(GuardedH11Protocol, header_timeout=settings.header_timeout,
                             max_connections=settings.max_connections)
