"""``AsyncLLM``: streaming generation for asyncio programs (the server builds on it)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from octavo.engine.input_processor import PromptType
from octavo.engine.llm_engine import LLMEngine
from octavo.engine.stats import EngineInfo, EngineStats
from octavo.entrypoints.llm import LLM, engine_config_from_kwargs
from octavo.outputs import RequestOutput
from octavo.sampling_params import SamplingParams


class AsyncLLM:
    """Runs engine steps in a worker thread while requests stream their outputs.

    Each ``generate()`` yields a ``RequestOutput`` whenever the request advanced; every
    ``CompletionOutput`` carries ``delta_text`` / ``delta_token_ids`` since the previous one.
    Leaving the iterator early (or ``abort()``) stops the request and frees its blocks.
    """

    def __init__(self, model: str | None = None, *, engine: LLMEngine | None = None,
                 **kwargs: Any) -> None:
        self.engine = engine or LLMEngine.from_config(engine_config_from_kwargs(model, **kwargs))
        self._lock = threading.Lock()
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._loop_task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def add_request(self, prompt: PromptType, sampling_params: SamplingParams | None = None,
                    request_id: str | None = None, priority: int = 0) -> RequestStream:
        """Queue a request now and return its output stream.

        Bad input raises ``ValueError`` here, before anything is queued, so a server can answer
        with an error before it starts streaming. Read the stream to its end or ``aclose()`` it.
        """
        params = sampling_params or SamplingParams()
        request_id = request_id or self.engine.next_request_id()
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:  # validation errors reach the caller here
            self.engine.add_request(request_id, prompt, params, priority)
            self._queues[request_id] = queue
        self._ensure_loop()
        return RequestStream(self, request_id, queue)

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams | None = None,
                       request_id: str | None = None, priority: int = 0
                       ) -> AsyncIterator[RequestOutput]:
        stream = self.add_request(prompt, sampling_params, request_id, priority)
        try:
            async for output in stream:
                yield output
        finally:
            await stream.aclose()

    @property
    def info(self) -> EngineInfo:
        """What this engine serves: model class, device, dtype, context, vocabulary, KV cache."""
        return self.engine.info

    def process_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """``(text, token ids)`` of a prompt as ``add_request`` would queue it; raises
        ValueError on a prompt the engine would refuse (too long, bad token ids)."""
        return self.engine.process_prompt(prompt)

    def stats(self) -> EngineStats:
        """The engine's load right now (request counts and KV cache occupancy).

        Read without the engine lock, so it never waits for a step; during a step the counts
        may be one step old.
        """
        return self.engine.stats()

    # Chat prompts are rendered exactly as the offline API renders them.
    apply_chat_template = LLM.apply_chat_template

    async def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with ``finish_reason == "abort"``."""
        with self._lock:
            output = self.engine.abort_request(request_id)
            queue = self._queues.pop(request_id, None)
        if queue is not None and output is not None:
            queue.put_nowait(output)

    async def abort_all(self) -> None:
        """Abort every request in flight; each stream ends with ``finish_reason == "abort"``."""
        for request_id in list(self._queues):
            await self.abort(request_id)

    def _ensure_loop(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def _step(self) -> list[RequestOutput]:
        with self._lock:
            return self.engine.step()

    async def _run(self) -> None:
        while True:
            if not self.engine.has_unfinished_requests():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                outputs = await asyncio.to_thread(self._step)
            except Exception as exc:  # fail every waiting stream, keep serving new requests
                with self._lock:
                    for request_id, queue in list(self._queues.items()):
                        self.engine.abort_request(request_id)
                        queue.put_nowait(exc)
                    self._queues.clear()
                continue
            for output in outputs:
                queue = self._queues.get(output.request_id)
                if queue is None:
                    continue
                queue.put_nowait(output)
                if output.finished:
                    self._queues.pop(output.request_id, None)

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None


class RequestStream:
    """The outputs of one queued request, as an async iterator.

    ``aclose()`` aborts the request if it has not finished (safe to call more than once, and
    before iterating at all), so its KV blocks return to the pool at once.
    """

    def __init__(self, llm: AsyncLLM, request_id: str, queue: asyncio.Queue) -> None:
        self.llm = llm
        self.request_id = request_id
        self._queue = queue
        self.finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.finished = True  # the engine loop already aborted it
            raise item
        self.finished = item.finished
        return item

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            await self.llm.abort(self.request_id)
