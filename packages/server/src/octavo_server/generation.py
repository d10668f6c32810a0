"""Running one API request's prompts through a served model.

Each prompt becomes one engine request (its ``n`` completions fork inside the engine). Every
engine request is queued before the response starts, so bad input is answered with a 400
instead of a broken stream, and every one is aborted if the response ends early.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import Request

from octavo.entrypoints.async_llm import RequestStream
from octavo.outputs import RequestOutput
from octavo.sampling_params import SamplingParams
from octavo_server.errors import APIError, ClientDisconnected, bad_request
from octavo_server.metrics import RequestTracker, ServerMetrics
from octavo_server.models import ServedModel
from octavo_server.protocol import UsageInfo

SAMPLING_FIELDS = frozenset({
    "n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "logit_bias", "seed", "max_tokens", "min_tokens", "stop",
    "stop_token_ids", "ignore_eos", "logprobs", "skip_special_tokens",
    "include_stop_str_in_output"})


@dataclass
class Prompt:
    text: str | None  # None when the client sent token ids
    token_ids: list[int]


def process_prompt(model: ServedModel, prompt: str | list[int], param: str = "prompt") -> Prompt:
    """Tokenize and validate one prompt (the engine's own input rules); 400 on bad input."""
    try:
        text, token_ids = model.llm.process_prompt(prompt)
    except ValueError as exc:
        raise APIError(400, str(exc), param=param,
                       code="context_length_exceeded" if "context" in str(exc) else None
                       ) from exc
    return Prompt(text, token_ids)


def check_context(model: ServedModel, prompt: Prompt, max_tokens: int | None,
                  max_tokens_field: str, prompt_field: str) -> None:
    """A prompt plus the tokens asked for must fit the model's context (400 as vLLM)."""
    limit = model.max_model_len
    if max_tokens is None or len(prompt.token_ids) + max_tokens <= limit:
        return
    raise APIError(
        400, f"this model's maximum context length is {limit} tokens; the request asks for "
        f"{len(prompt.token_ids) + max_tokens} ({len(prompt.token_ids)} in the {prompt_field}, "
        f"{max_tokens} in the completion): shorten the {prompt_field} or lower "
        f"{max_tokens_field}", param=max_tokens_field, code="context_length_exceeded")


def sampling_params(build, api_names: dict[str, str] | None = None) -> SamplingParams:
    """Call ``build()`` (which makes SamplingParams); a bad value is a 400 naming the field,
    by its API name where the route calls it something else (``api_names``)."""
    try:
        return build()
    except ValueError as exc:
        error = bad_request(exc, SAMPLING_FIELDS)
        error.param = (api_names or {}).get(error.param, error.param)
        raise error from exc


class Generation:
    """The engine requests behind one API request, and their merged outputs."""

    def __init__(self, model: ServedModel, prompts: Sequence[Prompt], n: int) -> None:
        self.model = model
        self.prompts = list(prompts)
        self.n = n
        self.streams: list[RequestStream] = []
        self.trackers: list[RequestTracker] = []

    @classmethod
    async def start(cls, model: ServedModel, metrics: ServerMetrics, prompts: Sequence[Prompt],
                    params: SamplingParams, priority: int = 0) -> Generation:
        """Queue every prompt, or none of them (400 on bad input, 503 on a full queue)."""
        generation = cls(model, prompts, params.n)
        try:
            for prompt in generation.prompts:
                generation.streams.append(model.submit(prompt.token_ids, params, priority))
                generation.trackers.append(metrics.tracker(model.name))
        except BaseException as exc:
            for stream in generation.streams:
                await stream.aclose()
            if isinstance(exc, ValueError):
                raise bad_request(exc, SAMPLING_FIELDS) from exc
            raise
        return generation

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """``(prompt index, output)`` as each engine request advances; aborts what is left
        unfinished when the caller stops early (a client that went away)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, stream: RequestStream) -> None:
            try:
                async for output in stream:
                    queue.put_nowait((index, output))
            except Exception as exc:  # the engine failed this request
                queue.put_nowait((index, exc))
            queue.put_nowait((index, None))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        remaining = len(tasks)
        try:
            while remaining:
                index, item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, Exception):
                    raise item
                self.trackers[index].observe(item)
                yield index, item
        finally:
            for task in tasks:
                task.cancel()
            await self.aclose()

    async def aclose(self) -> None:
        for stream, tracker in zip(self.streams, self.trackers):
            if not stream.finished:
                tracker.aborted(self.n)
                with contextlib.suppress(Exception):
                    await stream.aclose()

    async def final_outputs(self) -> list[RequestOutput]:
        """Every prompt's finished output, in prompt order."""
        finals: list[RequestOutput | None] = [None] * len(self.streams)
        async with contextlib.aclosing(self.outputs()) as outputs:
            async for index, output in outputs:
                if output.finished:
                    finals[index] = output
        return finals  # type: ignore[return-value]

    async def final_outputs_unless_disconnected(self, request: Request) -> list[RequestOutput]:
        """``final_outputs()``, but a client that hangs up (or a server that gives up on the
        request while shutting down) aborts the engine requests at once."""
        work = asyncio.ensure_future(self.final_outputs())
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                raise ClientDisconnected
            return work.result()
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            await self.aclose()

    def choice_index(self, prompt_index: int, output_index: int) -> int:
        return prompt_index * self.n + output_index


async def _disconnected(request: Request) -> None:
    """Return once the client disconnects (the body has been read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def usage(prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)


def final_usage(outputs: Sequence[RequestOutput]) -> UsageInfo:
    return usage(sum(len(o.prompt_token_ids) for o in outputs),
                 sum(len(c.token_ids) for o in outputs for c in o.outputs))
