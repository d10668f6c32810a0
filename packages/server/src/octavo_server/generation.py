"""Running one API request's prompts through a served model.

Each prompt becomes one engine request (its ``n`` completions fork inside the engine). Every
engine request is queued before the response starts, so bad input is answered with a 400
instead of a broken stream, and every one is aborted if the response ends early.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import Request

from octavo.entrypoints.async_llm import RequestStream
from octavo.outputs import RequestOutput
from octavo.sampling_params import SamplingParams
from octavo_server.errors import APIError, ClientDisconnected, bad_request
from octavo_server.metrics import RequestTracker, ServerMetrics
from octavo_server.models import ServedModel
from octavo_server.prompts import Prompt
from octavo_server.protocol import UsageInfo
from octavo_server.settings import ServerSettings

SAMPLING_FIELDS = frozenset({
    "n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "logit_bias", "seed", "max_tokens", "min_tokens", "stop",
    "stop_token_ids", "ignore_eos", "logprobs", "skip_special_tokens",
    "include_stop_str_in_output"})


def sampling_params(build, api_names: dict[str, str] | None = None) -> SamplingParams:
    """Call ``build()`` (which makes SamplingParams); a bad value is a 400 naming the field,
    by its API name where the route calls it something else (``api_names``)."""
    try:
        return build()
    except ValueError as exc:
        error = bad_request(exc, SAMPLING_FIELDS)
        error.param = (api_names or {}).get(error.param, error.param)
        raise error from exc


def check_n(n: int, settings: ServerSettings) -> None:
    """400 naming ``n`` above ``--max-n`` (``best_of``, which must equal n, follows)."""
    if n > settings.max_n:
        raise APIError(400, f"n must be <= {settings.max_n}, got {n}", param="n")


class Generation:
    """The engine requests behind one API request, and their merged outputs."""

    def __init__(self, model: ServedModel, prompts: Sequence[Prompt], n: int) -> None:
        self.model = model
        self.prompts = list(prompts)
        self.n = n
        self.streams: list[RequestStream] = []
        self.trackers: list[RequestTracker] = []
        self._release: Callable[[], None] | None = None

    def hold(self, release: Callable[[], None]) -> None:
        """Call ``release`` (the model's lease) once every engine request has ended, or when
        the generation is dropped unread (a stream whose client left before it began)."""
        self._release = release
        weakref.finalize(self, release)

    @classmethod
    async def start(cls, model: ServedModel, metrics: ServerMetrics, prompts: Sequence[Prompt],
                    params: SamplingParams, priority: int = 0, prompt_field: str = "prompt"
                    ) -> Generation:
        """Queue every prompt, or none of them (400 on bad input, 503 when the waiting queue
        has no room for all their sequences)."""
        generation = cls(model, prompts, params.n)
        model.admit(len(generation.prompts) * params.n, "n" if params.n > 1 else prompt_field)
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
        if self._release is not None:
            self._release()

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
