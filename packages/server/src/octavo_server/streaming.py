"""Server-sent events in OpenAI's format: one ``data: {json}`` per chunk, then ``[DONE]``; and
``StreamProgress``, the bookkeeping both streaming routes share."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from octavo.engine.executor import EngineDeadError
from octavo.outputs import CompletionOutput, RequestOutput, TokenLogprobDict
from octavo_server.errors import APIError, error_body
from octavo_server.generation import Generation, usage
from octavo_server.protocol import SamplingRequest, UsageInfo

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
    except EngineDeadError as exc:
        yield _error_event(503, str(exc), code="engine_dead")
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


@dataclass
class ChoiceDelta:
    """What one choice has to send in a chunk: what is new since its previous chunk."""

    index: int  # the choice's index in the response
    completion: CompletionOutput
    token_ids: list[int]  # tokens not sent before
    logprobs: list[TokenLogprobDict]  # their logprob entries ([] when none were asked for)
    first: bool  # the choice's first chunk


class StreamProgress:
    """What a stream has sent so far: per choice index the tokens sent, and which choices have
    finished; the usage those make."""

    def __init__(self, prompt_tokens: int, continuous_usage: bool = False) -> None:
        self.prompt_tokens = prompt_tokens
        self.continuous_usage = continuous_usage
        self.sent_tokens: dict[int, int] = {}  # choice index -> tokens sent so far
        self.finished: set[int] = set()

    @classmethod
    def of(cls, body: SamplingRequest, generation: Generation) -> StreamProgress:
        """Progress for ``body``'s stream over ``generation``'s prompts."""
        options = body.stream_options
        return cls(sum(len(p.token_ids) for p in generation.prompts),
                   bool(options and options.continuous_usage_stats))

    def advance(self, index: int, completion: CompletionOutput) -> ChoiceDelta | None:
        """Record what choice ``index`` sends now and return it; None when it has nothing to
        send (no new token or text, and it did not just finish) or finished before."""
        done = self.sent_tokens.get(index, 0)
        new_ids = completion.token_ids[done:]
        if index in self.finished or not (new_ids or completion.delta_text
                                          or completion.finished):
            return None
        first = index not in self.sent_tokens
        self.sent_tokens[index] = len(completion.token_ids)
        if completion.finished:
            self.finished.add(index)
        return ChoiceDelta(index, completion, new_ids, (completion.logprobs or [])[done:], first)

    async def steps(self, generation: Generation
                    ) -> AsyncIterator[tuple[RequestOutput, list[ChoiceDelta]]]:
        """``(output, deltas)`` for each engine step that has something to send, its deltas
        already recorded."""
        async with contextlib.aclosing(generation.outputs()) as outputs:
            async for prompt_index, output in outputs:
                deltas = [self.advance(generation.choice_index(prompt_index, c.index), c)
                          for c in output.outputs]
                deltas = [delta for delta in deltas if delta is not None]
                if deltas:
                    yield output, deltas

    def usage(self) -> UsageInfo:
        """The prompt's tokens and every token sent so far (the final usage chunk's)."""
        return usage(self.prompt_tokens, sum(self.sent_tokens.values()))

    def chunk_usage(self) -> UsageInfo | None:
        """The usage a content chunk carries: ``usage()`` with continuous usage stats, else
        None."""
        return self.usage() if self.continuous_usage else None
