"""``AsyncLLM``: streaming generation for asyncio programs (the server builds on it)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from octavo.engine.input_processor import PromptType
from octavo.engine.llm_engine import LLMEngine
from octavo.entrypoints.llm import engine_config_from_kwargs
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

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams | None = None,
                       request_id: str | None = None, priority: int = 0
                       ) -> AsyncIterator[RequestOutput]:
        params = sampling_params or SamplingParams()
        request_id = request_id or self.engine.next_request_id()
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:  # validation errors reach the caller here
            self.engine.add_request(request_id, prompt, params, priority)
            self._queues[request_id] = queue
        self._ensure_loop()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with ``finish_reason == "abort"``."""
        with self._lock:
            output = self.engine.abort_request(request_id)
            queue = self._queues.pop(request_id, None)
        if queue is not None and output is not None:
            queue.put_nowait(output)

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
