"""``AsyncLLM``: streaming generation for asyncio programs (the server builds on it)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from octavo.engine.executor import EngineDeadError
from octavo.engine.input_processor import PromptType
from octavo.engine.llm_engine import LLMEngine, PreparedRequest
from octavo.engine.stats import EngineInfo, EngineStats
from octavo.entrypoints.llm import LLM, engine_config_from_kwargs
from octavo.outputs import RequestOutput
from octavo.sampling_params import SamplingParams


class AsyncLLM:
    """Runs engine steps in a worker thread while requests stream their outputs.

    Each ``generate()`` yields a ``RequestOutput`` whenever the request advanced; every
    ``CompletionOutput`` carries ``delta_text`` / ``delta_token_ids`` since the previous one.
    Leaving the iterator early (or ``abort()``) stops the request and frees its blocks.

    The event loop never waits for a step: a request is validated on the caller's thread,
    then handed over as a command that the engine loop applies between two steps (as are
    aborts). Only one step runs at a time and nothing else touches the engine meanwhile, so
    there is no lock.
    """

    def __init__(self, model: str | None = None, *, engine: LLMEngine | None = None,
                 **kwargs: Any) -> None:
        self.engine = engine or LLMEngine.from_config(engine_config_from_kwargs(model, **kwargs))
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._commands: deque[_Add | _Abort] = deque()  # applied between steps, in order
        self._unadmitted: set[str] = set()  # ids whose _Add is still in _commands
        self._loop_task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None
        self.dead: EngineDeadError | None = None  # set once a worker died: nothing runs again

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def add_request(self, prompt: PromptType, sampling_params: SamplingParams | None = None,
                    request_id: str | None = None, priority: int = 0) -> RequestStream:
        """Validate a request now and return its output stream; the engine takes it in before
        its next step.

        Bad input raises ``ValueError`` here, before anything is queued, so a server can answer
        with an error before it starts streaming. Read the stream to its end or ``aclose()`` it.
        """
        if self.dead is not None:
            raise self.dead
        params = sampling_params or SamplingParams()
        request_id = request_id or self.engine.next_request_id()
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already in use")
        prepared = self.engine.prepare_request(request_id, prompt, params, priority)
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        self._unadmitted.add(request_id)
        self._commands.append(_Add(prepared))
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
        """The engine's load right now (request counts and KV cache occupancy); requests not
        yet taken in by the engine count as waiting.

        Read without waiting for a step; during a step the counts may be one step old.
        """
        stats = self.engine.stats()
        pending = sum(len(c.prepared.core_requests) for c in self._commands
                      if isinstance(c, _Add))
        return dataclasses.replace(stats, num_waiting=stats.num_waiting + pending)

    # Chat prompts are rendered exactly as the offline API renders them.
    apply_chat_template = LLM.apply_chat_template

    async def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with ``finish_reason == "abort"``. Returns once the
        engine has let it go (after the step running now, if any) and its blocks are free."""
        if request_id not in self._queues:
            return
        done = asyncio.get_running_loop().create_future()
        self._commands.append(_Abort(request_id, done))
        self._ensure_loop()
        await done

    async def abort_all(self) -> None:
        """Abort every request in flight; each stream ends with ``finish_reason == "abort"``."""
        await asyncio.gather(*(self.abort(request_id) for request_id in list(self._queues)))

    def _ensure_loop(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._apply_commands()
            if not self.engine.has_unfinished_requests():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                outputs = await asyncio.to_thread(self.engine.step)
            except EngineDeadError as exc:  # fail every request, queued or not, and stop
                self.dead = exc
                for request_id in list(self._queues):
                    self._deliver(request_id, exc)
                return
            except Exception as exc:  # fail every request the engine holds, keep serving
                self._fail_admitted(exc)
                continue
            for output in outputs:
                self._deliver(output.request_id, output)

    def _apply_commands(self) -> None:
        """Take in new requests and let aborted ones go (no step runs meanwhile)."""
        while self._commands:
            command = self._commands.popleft()
            if isinstance(command, _Add):
                request_id = command.prepared.request_id
                self._unadmitted.discard(request_id)
                try:
                    self.engine.admit(command.prepared)
                except Exception as exc:  # e.g. an id still held by a request in flight
                    self._deliver(request_id, exc)
            else:
                try:
                    output = self.engine.abort_request(command.request_id)
                except Exception as exc:  # noqa: BLE001 - the stream gets the error instead
                    output = exc
                if output is not None:
                    self._deliver(command.request_id, output)
                self._queues.pop(command.request_id, None)
                _resolve(command.done)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        queue = self._queues.get(request_id)
        if queue is None:
            return
        queue.put_nowait(item)
        if isinstance(item, BaseException) or item.finished:
            self._queues.pop(request_id, None)

    def _fail_admitted(self, exc: Exception) -> None:
        for request_id in list(self._queues):
            if request_id not in self._unadmitted:
                self.engine.abort_request(request_id)
                self._deliver(request_id, exc)

    async def shutdown(self) -> None:
        """Stop the engine loop and the engine's workers; aborts still waiting to be applied
        return at once."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for command in self._commands:
            if isinstance(command, _Abort):
                _resolve(command.done)
        self.engine.shutdown()  # tensor-parallel workers, if any


def _resolve(done: asyncio.Future) -> None:
    if not done.done():
        done.set_result(None)


@dataclasses.dataclass(frozen=True)
class _Add:
    prepared: PreparedRequest


@dataclasses.dataclass(frozen=True)
class _Abort:
    request_id: str
    done: asyncio.Future


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
