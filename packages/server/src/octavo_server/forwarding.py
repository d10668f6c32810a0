"""An HTTP request handed from a front process to a replica that runs the app in-process.

The Ray Serve deployment (``ray_serve.py``) forwards each request, whole, to one engine
replica, which runs it through the same FastAPI app ``octavo serve`` runs, so the OpenAI
routes, errors and streaming exist once. This module is the transport-free half: what a
forwarded request carries (with the text a prefix-aware router matches on) and how a replica
drives the ASGI app with it. Nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class ForwardedRequest:
    """One HTTP request, body included.

    ``prompt`` is the text a prefix-aware router matches on (Ray Serve's
    ``PrefixCacheAffinityRouter`` reads a ``prompt`` attribute): see :func:`routing_text`.
    """

    method: str
    path: str
    query_string: bytes
    headers: Headers
    body: bytes
    prompt: str


def routing_text(path: str, body: bytes, max_chars: int) -> str:
    """The first ``max_chars`` characters of the request's prompt, as the replica will see it.

    Completions: the prompt (the first one of a batch; token ids written as decimal numbers
    separated by spaces). Chat: each message as ``role: content`` on its own line, so
    conversations that share their first turns share a prefix, as their rendered chat
    templates do. Anything else (``/v1/models``, ``/metrics``, a body that is not JSON): the
    path, so it is never empty.
    """
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    text = ""
    if isinstance(payload, dict):
        if "messages" in payload:
            text = _messages_text(payload["messages"])
        elif "prompt" in payload:
            text = _prompt_text(payload["prompt"])
    return (text or path)[:max_chars]


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) for t in prompt):
            return " ".join(map(str, prompt))
        return _prompt_text(prompt[0])
    return ""


def _messages_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    lines = []
    for message in messages:
        if isinstance(message, dict):
            lines.append(f"{message.get('role', '')}: {_content_text(message.get('content'))}")
    return "\n".join(lines)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


async def call_app(app: ASGIApp, request: ForwardedRequest, extra_headers: Headers = ()
                   ) -> AsyncIterator[tuple[int, Headers] | bytes]:
    """Run ``request`` through ``app``: yields ``(status, headers)`` first (with
    ``extra_headers`` added), then the body's chunks as the app sends them.

    Closing the iterator early (the client went away) tells the app the client disconnected,
    so it aborts the engine requests, and waits for the app to finish.
    """
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": request.method, "scheme": "http",
             "path": request.path, "raw_path": request.path.encode(), "root_path": "",
             "query_string": request.query_string, "headers": list(request.headers),
             "client": None, "server": None}
    sent: asyncio.Queue[Message | None] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_given = False

    async def receive() -> Message:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await app(scope, receive, sent.put)
        finally:
            sent.put_nowait(None)

    task = asyncio.ensure_future(run())
    try:
        while (message := await sent.get()) is not None:
            if message["type"] == "http.response.start":
                yield message["status"], list(message.get("headers", [])) + list(extra_headers)
            elif message["type"] == "http.response.body" and message.get("body"):
                yield message["body"]
    finally:
        disconnected.set()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            logger.error("the app failed on %s %s", request.method, request.path,
                         exc_info=task.exception())
