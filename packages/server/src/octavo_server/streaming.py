"""Server-sent events in OpenAI's format: one ``data: {json}`` per chunk, then ``[DONE]``."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from octavo_server.errors import APIError, error_body
from octavo_server.generation import Generation

logger = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


def sse(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


async def _with_done(chunks: AsyncIterator[str], generation: Generation
                     ) -> AsyncIterator[str]:
    """The chunks, then ``[DONE]``; an error after the headers went out becomes an error event.

    However the stream ends (a client that disconnects cancels it), the generation's
    unfinished requests are aborted.
    """
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    except APIError as exc:
        yield _error_event(exc.status, exc.message, exc.param, exc.code)
    except Exception as exc:  # the engine failed mid-stream; the client still gets an answer
        logger.exception("stream failed")
        yield _error_event(500, f"generation failed: {exc}")
    finally:
        await generation.aclose()
    yield DONE


def _error_event(status: int, message: str, param: str | None = None,
                 code: str | None = None) -> str:
    return f"data: {json.dumps(error_body(status, message, param, code))}\n\n"


def event_stream(chunks: AsyncIterator[str], generation: Generation) -> StreamingResponse:
    return StreamingResponse(_with_done(chunks, generation), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
