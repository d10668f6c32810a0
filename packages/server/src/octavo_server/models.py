"""Every request reaches its engine through the ``model`` it names, by a lease.

The engines live in core's ``octavo.entrypoints.model_manager.ModelManager`` (lazy loading,
the memory budget, idle unloading, hot swap); this module gives the routes a ``ServedModel``
per engine and turns the manager's errors into OpenAI-style API errors.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from octavo.engine.stats import EngineStats
from octavo.entrypoints.async_llm import AsyncLLM, RequestStream
from octavo.entrypoints.model_manager import (
    Engine,
    InsufficientMemory,
    Lease,
    ManagedModel,
    ModelConflict,
    ModelLoadError,
    ModelNotFound,
    ModelSpec,
    load_engine,
)
from octavo.entrypoints.model_manager import ModelManager as EngineManager
from octavo.sampling_params import SamplingParams
from octavo_server.errors import APIError

DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
UNKNOWN_VOCAB_TOKEN_BYTES = 1024  # longer than any real vocabulary entry


@dataclass
class ServedModel:
    """One loaded engine under the name clients use."""

    name: str
    llm: AsyncLLM
    source: str  # what was loaded: a path, a hub id, or the demo's name
    max_waiting_requests: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.llm.info.max_model_len

    def stats(self) -> EngineStats:
        return self.llm.stats()

    @cached_property
    def max_token_bytes(self) -> int:
        """The most UTF-8 bytes of text one token can stand for: its longest vocabulary entry,
        special tokens included (an entry's spelling is never shorter than the text it
        covers: byte-level BPE writes each byte as one character, SentencePiece a space as
        three bytes). A tokenizer that maps unknown text of any length to one unknown token
        is the exception; ``--max-prompt-bytes`` overrides the bound for it."""
        try:
            vocab = self.tokenizer.get_vocab()
        except (AttributeError, NotImplementedError):  # a tokenizer that cannot list it
            return UNKNOWN_VOCAB_TOKEN_BYTES
        return max((len(token.encode("utf-8", "surrogatepass")) for token in vocab), default=1)

    def admit(self, num_sequences: int, param: str) -> None:
        """Check that ``num_sequences`` more sequences fit the waiting queue: 503 while they
        do not, 400 (naming ``param``) if they never can."""
        limit = self.max_waiting_requests
        if limit is None:
            return
        if num_sequences > limit:
            raise APIError(400, f"this request asks for {num_sequences} sequences (prompts "
                           f"times n); the server queues at most {limit}", param=param)
        waiting = self.stats().num_waiting
        if waiting + num_sequences > limit:
            raise APIError(503, f"the server is busy: {waiting} sequences wait and this request "
                           f"adds {num_sequences}, over the limit of {limit}; retry later",
                           code="queue_full")

    def submit(self, prompt_token_ids: list[int], params: SamplingParams,
               priority: int = 0) -> RequestStream:
        """Queue a request (``admit`` it first); ValueError on input the engine refuses."""
        return self.llm.add_request({"prompt_token_ids": prompt_token_ids}, params,
                                    priority=priority)


class ModelLease:
    """A request's hold on the engine serving its model. Leaving ``async with`` releases it,
    unless ``keep()`` handed the release to whoever outlives the route (a streaming
    generation)."""

    def __init__(self, lease: Lease, model: ServedModel) -> None:
        self._lease = lease
        self.model = model
        self._kept = False

    def keep(self) -> Callable[[], None]:
        self._kept = True
        return self._lease.release

    async def __aenter__(self) -> ServedModel:
        return self.model

    async def __aexit__(self, *exc) -> None:
        if not self._kept:
            self._lease.release()


@contextlib.contextmanager
def api_errors(load_status: int = 500, load_param: str | None = None):
    """The manager's errors as API errors: unknown model 404, no memory 503 (retryable), a
    model that failed to load ``load_status``, a conflicting admin call 409."""
    try:
        yield
    except ModelNotFound as exc:
        raise APIError(404, str(exc), param="model", code="model_not_found") from exc
    except InsufficientMemory as exc:
        raise APIError(503, str(exc), code="insufficient_memory") from exc
    except ModelLoadError as exc:
        raise APIError(load_status, str(exc), param=load_param, code="model_load_failed") from exc
    except ModelConflict as exc:
        raise APIError(409, str(exc), param="model", code="model_conflict") from exc


class ModelManager:
    """The served models (see ``EngineManager``); a request without ``model`` goes to the
    first. Engines passed in already loaded (``ServedModel``) are pinned: nothing could load
    them again."""

    def __init__(self, models: list[ServedModel] | None = None, *,
                 specs: list[ModelSpec] | tuple[ModelSpec, ...] = (),
                 memory_budget_gib: float | None = None, idle_unload_s: float | None = None,
                 max_waiting_requests: int | None = None,
                 loader: Callable[[ModelSpec], AsyncLLM] = load_engine) -> None:
        budget = None if memory_budget_gib is None else int(memory_budget_gib * (1 << 30))
        self.engines = EngineManager(memory_budget_bytes=budget, idle_unload_s=idle_unload_s,
                                     loader=loader, on_event=self._event)
        self.max_waiting_requests = max_waiting_requests
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []
        self._served: weakref.WeakKeyDictionary[Engine, ServedModel] = (
            weakref.WeakKeyDictionary())
        for model in models or []:
            self.add(model)
        for spec in specs:
            self.engines.add(spec)

    def add(self, model: ServedModel) -> None:
        managed = self.engines.add(ModelSpec(model.name, model.source, pinned=True), model.llm)
        self._served[managed.engine] = model

    def get(self, name: str | None) -> ManagedModel:
        with api_errors():
            return self.engines.get(name)

    async def lease(self, name: str | None) -> ModelLease:
        """A lease on the engine serving ``name``; its first request loads it (503 when the
        memory budget has no room, 500 when it fails to load)."""
        with api_errors():
            lease = await self.engines.acquire(name)
        return ModelLease(lease, self._served_model(lease.model, lease.engine))

    def _served_model(self, managed: ManagedModel, engine: Engine) -> ServedModel:
        served = self._served.get(engine)
        if served is None:
            served = ServedModel(managed.name, engine.llm, engine.source or DEMO_MODEL_NAME,
                                 max_waiting_requests=self.max_waiting_requests)
            self._served[engine] = served
        return served

    def __iter__(self) -> Iterator[ServedModel]:
        """The loaded models (their current engines)."""
        return iter([self._served_model(m, m.engine) for m in self.engines if m.engine])

    def configured(self) -> list[ManagedModel]:
        return list(self.engines)

    def all_engines(self) -> list[AsyncLLM]:
        return self.engines.engines()

    def _event(self, kind: str, name: str, details: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(kind, name, details)

    async def shutdown(self) -> None:
        """Stop every engine loop (requests still running are aborted by their handlers)."""
        await self.engines.shutdown()
