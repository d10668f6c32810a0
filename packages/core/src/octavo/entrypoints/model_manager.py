"""Several engines in one process, by served name: lazy loading, a memory budget, hot swap.

```python
manager = ModelManager([ModelSpec("llama", "path/to/llama", {"device": "cpu"}),
                        ModelSpec("gpt2", "path/to/gpt2", {"device": "cpu"})],
                       memory_budget_bytes=4 << 30, idle_unload_s=600)
async with await manager.acquire("llama") as lease:   # loads it on first use
    async for out in lease.llm.generate("Hello", SamplingParams(max_tokens=8)):
        ...
await manager.swap("llama", "path/to/llama-v2")        # in-flight requests finish on v1
await manager.shutdown()
```

A model costs nothing until its first ``acquire``; concurrent first requests share one load,
which runs in a worker thread so other models keep serving. A lease marks its engine busy:
an engine with leases is never evicted, and a swapped-out or unloaded engine is shut down
once its last lease is released. Loading a model that does not fit the budget evicts idle,
unpinned models, least recently used first; when that cannot make room, ``acquire`` raises
``InsufficientMemory`` (retryable). Every method runs on the event loop that serves requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from octavo.entrypoints.async_llm import AsyncLLM
from octavo.entrypoints.model_memory import GiB, engine_tensor_bytes, estimate_bytes

logger = logging.getLogger("octavo.models")


class ModelState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"


class ModelNotFound(LookupError):
    """No model is served under this name (or alias)."""

    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(f"the model {name!r} does not exist; this server serves {served}")
        self.name = name
        self.served = served


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded (a missing path, a broken checkpoint, bad options)."""


class InsufficientMemory(RuntimeError):
    """Loading would exceed the memory budget and no idle model can be evicted: retry later."""


class ModelConflict(RuntimeError):
    """The operation does not apply to the model as it is (unloading a pinned model)."""


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its name, where it loads from, and its own engine options."""

    name: str
    model: str | None = None  # a folder, a weights file, a GGUF file, a hub id; None: the demo
    options: dict[str, Any] = field(default_factory=dict)  # AsyncLLM keyword arguments
    aliases: tuple[str, ...] = ()
    pinned: bool = False  # never evicted or unloaded for idleness
    preload: bool = False  # loaded by ``preload()`` (at a server's start) instead of on first use
    memory_gib: float | None = None  # overrides the estimate before the first load


@dataclass(eq=False)
class Engine:
    """One loaded version of a model."""

    llm: AsyncLLM | None
    source: str | None
    memory_bytes: int  # measured after load
    load_seconds: float
    leases: int = 0
    retired: bool = False  # swapped out or unloaded: shut down when its last lease goes


@dataclass(eq=False)
class ManagedModel:
    spec: ModelSpec
    engine: Engine | None = None
    loading: asyncio.Future | None = None
    reserved_bytes: int = 0  # the estimate of a load in progress
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one swap or unload at a time
    num_loads: int = 0
    max_model_len: int | None = None  # remembered from the last load
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> ModelState:
        if self.engine is not None:
            return ModelState.LOADED
        return ModelState.LOADING if self.loading is not None else ModelState.UNLOADED


class Lease:
    """A request's hold on one engine; ``release()`` (idempotent) or leave ``async with``."""

    def __init__(self, manager: ModelManager, model: ManagedModel, engine: Engine) -> None:
        self.manager = manager
        self.model = model
        self.engine = engine
        self.released = False
        engine.leases += 1
        model.last_used = time.monotonic()

    @property
    def llm(self) -> AsyncLLM:
        assert self.engine.llm is not None, "a leased engine is never shut down"
        return self.engine.llm

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.manager._released(self)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()


Event = Callable[[str, str, dict[str, Any]], None]  # (kind, model name, details)


def load_engine(spec: ModelSpec) -> AsyncLLM:
    return AsyncLLM(spec.model, **spec.options)


class ModelManager:
    """Engines by served name under one memory budget (see the module's docstring)."""

    def __init__(self, specs: list[ModelSpec] | tuple[ModelSpec, ...] = (), *,
                 memory_budget_bytes: int | None = None, idle_unload_s: float | None = None,
                 loader: Callable[[ModelSpec], AsyncLLM] = load_engine,
                 on_event: Event | None = None) -> None:
        self.memory_budget_bytes = memory_budget_bytes
        self.idle_unload_s = idle_unload_s
        self.loader = loader
        self.on_event = on_event
        self._models: dict[str, ManagedModel] = {}
        self._names: dict[str, str] = {}  # served name or alias -> model name
        self._draining: list[Engine] = []  # retired engines that still have leases
        self._stopping: set[asyncio.Future] = set()  # their loops being stopped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.Task | None = None
        for spec in specs:
            self.add(spec)

    # -- configuration -------------------------------------------------------------------

    def add(self, spec: ModelSpec, llm: AsyncLLM | None = None) -> ManagedModel:
        """Serve ``spec``; with ``llm``, an engine already loaded from it."""
        taken = [n for n in (spec.name, *spec.aliases) if n in self._names]
        if taken:
            raise ValueError(f"a model named {taken[0]!r} is already served")
        model = ManagedModel(spec)
        self._models[spec.name] = model
        for name in (spec.name, *spec.aliases):
            self._names[name] = spec.name
        if llm is not None:
            model.engine = Engine(llm, spec.model, _measure(llm), 0.0)
            model.max_model_len = llm.info.max_model_len
        return model

    def __iter__(self) -> Iterator[ManagedModel]:
        return iter(list(self._models.values()))

    @property
    def served_names(self) -> list[str]:
        return sorted(self._names)

    def get(self, name: str | None) -> ManagedModel:
        """The model served as ``name`` (or an alias); ``None`` or "": the first one."""
        if not name:
            if not self._models:
                raise ModelNotFound("", [])
            return next(iter(self._models.values()))
        if name not in self._names:
            raise ModelNotFound(name, self.served_names)
        return self._models[self._names[name]]

    def engines(self) -> list[AsyncLLM]:
        """Every engine alive: the models' current ones and those still draining."""
        current = [m.engine for m in self._models.values() if m.engine is not None]
        return [e.llm for e in current + self._draining if e.llm is not None]

    def used_bytes(self) -> int:
        loaded = sum(m.engine.memory_bytes for m in self._models.values() if m.engine)
        return (loaded + sum(m.reserved_bytes for m in self._models.values())
                + sum(e.memory_bytes for e in self._draining))

    # -- requests ------------------------------------------------------------------------

    async def acquire(self, name: str | None, reason: str = "first request") -> Lease:
        """A lease on the engine serving ``name``, loading it first if it is not loaded.

        Raises ModelNotFound, InsufficientMemory or ModelLoadError.
        """
        self._start()
        model = self.get(name)
        while model.engine is None:
            if model.loading is None:
                model.loading = asyncio.ensure_future(self._load_current(model, reason))
                model.loading.add_done_callback(_retrieve)  # waiters may all have gone
            await asyncio.shield(model.loading)
        return Lease(self, model, model.engine)

    def _released(self, lease: Lease) -> None:
        engine = lease.engine
        engine.leases -= 1
        lease.model.last_used = time.monotonic()
        if engine.retired and engine.leases == 0:
            self._call_soon(self._free, engine, lease.model.name)

    # -- admin ---------------------------------------------------------------------------

    async def load(self, name: str, reason: str = "asked to load") -> ManagedModel:
        """Load a model now (no-op when loaded); it counts as just used."""
        (await self.acquire(name, reason)).release()
        return self.get(name)

    async def preload(self) -> None:
        """Load every model whose spec says ``preload``, one after another."""
        for model in self:
            if model.spec.preload:
                await self.load(model.name, "preload")

    async def unload(self, name: str, reason: str = "asked to") -> ManagedModel:
        """Stop routing to the model; its engine is freed once its requests finish."""
        model = self.get(name)
        if model.spec.pinned:
            raise ModelConflict(f"the model {model.name!r} is pinned; unpin it first")
        if model.loading is not None:  # a load in progress finishes first
            with contextlib.suppress(Exception):
                await asyncio.shield(model.loading)
        async with model.lock:  # and a swap in progress
            self._retire(model, reason)
        return model

    def pin(self, name: str, pinned: bool = True) -> ManagedModel:
        model = self.get(name)
        model.spec = replace(model.spec, pinned=pinned)
        logger.info("%s %r", "pinned" if pinned else "unpinned", model.name)
        return model

    async def swap(self, name: str, source: str, options: dict[str, Any] | None = None
                   ) -> ManagedModel:
        """Load ``source`` under ``name``, then route new requests to it; requests in flight
        finish on the old engine, which is freed after them. On failure (ModelLoadError,
        InsufficientMemory) the old engine keeps serving."""
        self._start()
        model = self.get(name)
        spec = replace(model.spec, model=source, memory_gib=None,
                       options={**model.spec.options, **(options or {})})
        async with model.lock:
            start = time.monotonic()
            engine = await self._load(model, spec, f"swap to {source}")
            old, model.engine, model.spec = model.engine, engine, spec
            drained = old.leases if old is not None else 0
            if old is not None:
                self._retire_engine(old, name)
        seconds = time.monotonic() - start
        logger.info("swapped %r to %s in %.2f s; the old engine finishes %d requests in flight",
                    name, source, seconds, drained)
        self._emit("swap", name, seconds=seconds)
        return model

    async def shutdown(self) -> None:
        """Stop the idle reaper and every engine loop (leases still held are not waited for)."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for engine in [m.engine for m in self._models.values() if m.engine] + self._draining:
            if engine.llm is not None:
                await engine.llm.shutdown()
        await asyncio.gather(*self._stopping, return_exceptions=True)

    # -- loading and eviction ------------------------------------------------------------

    async def _load_current(self, model: ManagedModel, reason: str) -> None:
        try:
            async with model.lock:  # after a swap or unload of this model in progress
                if model.engine is None:
                    model.engine = await self._load(model, model.spec, reason)
                    # idle from now, not from before it was unloaded: else the reaper could
                    # retire it before the request that loaded it takes its lease
                    model.last_used = time.monotonic()
        finally:
            model.loading = None

    async def _load(self, model: ManagedModel, spec: ModelSpec, reason: str) -> Engine:
        estimate = (int(spec.memory_gib * GiB) if spec.memory_gib is not None
                    else estimate_bytes(spec.model, spec.options))
        self._make_room(estimate, model)
        logger.info("loading %r from %s (%s; estimate %s, %s)", model.name, spec.model,
                    reason, _size(estimate), self._budget_text())
        model.reserved_bytes += estimate
        start = time.monotonic()
        try:
            llm = await asyncio.to_thread(self.loader, spec)
            measured = await asyncio.to_thread(_measure, llm)
        except Exception as exc:
            logger.warning("loading %r from %s failed: %s", model.name, spec.model, exc)
            raise ModelLoadError(f"the model {model.name!r} could not be loaded from "
                                 f"{spec.model}: {type(exc).__name__}: {exc}") from exc
        finally:
            model.reserved_bytes -= estimate
        seconds = time.monotonic() - start
        model.num_loads += 1
        model.max_model_len = llm.info.max_model_len
        logger.info("loaded %r in %.2f s: %s measured (estimate %s)", model.name, seconds,
                    _size(measured), _size(estimate))
        self._emit("load", model.name, seconds=seconds, bytes=measured)
        engine = Engine(llm, spec.model, measured, seconds)
        self._make_room(0, model, strict=False, extra=measured)
        return engine

    def _make_room(self, need: int, model: ManagedModel, strict: bool = True,
                   extra: int = 0) -> None:
        """Evict idle, unpinned models (least recently used first) until ``need`` more bytes
        fit the budget; raise InsufficientMemory (evicting nothing) when they cannot."""
        budget = self.memory_budget_bytes
        if budget is None:
            return
        over = self.used_bytes() + extra + need - budget
        if over <= 0:
            return
        victims = sorted((m for m in self._models.values() if m is not model and _evictable(m)),
                         key=lambda m: m.last_used)
        chosen, freed = [], 0
        for victim in victims:
            if freed >= over:
                break
            chosen.append(victim)
            freed += victim.engine.memory_bytes
        if freed < over:
            message = (f"loading {model.name!r} needs {_size(need + extra)} but only "
                       f"{_size(budget - self.used_bytes() + freed)} of the "
                       f"{_size(budget)} budget can be freed ({self._holders(model)}); "
                       "retry when requests to other models finish")
            if strict:
                raise InsufficientMemory(message)
            logger.warning("over the memory budget: %s", message)
        for victim in chosen:
            idle = time.monotonic() - victim.last_used
            self._retire(victim, f"evicted to make room for {model.name!r} (least recently "
                                 f"used: idle {idle:.1f} s)")

    def _holders(self, model: ManagedModel) -> str:
        held = [f"{m.name}: {_size(m.engine.memory_bytes if m.engine else m.reserved_bytes)}, "
                f"{_why_kept(m)}" for m in self._models.values()
                if m is not model and (m.engine or m.reserved_bytes)]
        held += [f"a swapped-out engine: {_size(e.memory_bytes)}, draining"
                 for e in self._draining]
        return "; ".join(held) or "nothing else is loaded"

    def _budget_text(self) -> str:
        if self.memory_budget_bytes is None:
            return "no memory budget"
        return (f"{_size(self.used_bytes())} of the {_size(self.memory_budget_bytes)} budget "
                "in use")

    def _retire(self, model: ManagedModel, reason: str) -> None:
        engine, model.engine = model.engine, None
        if engine is None:
            return
        logger.info("unloading %r: %s", model.name, reason)
        self._emit("unload", model.name, reason=reason.split(" ", 1)[0])
        self._retire_engine(engine, model.name)

    def _retire_engine(self, engine: Engine, name: str) -> None:
        """No new lease goes to ``engine``; it is freed now, or after its last lease."""
        engine.retired = True
        if engine.leases:
            self._draining.append(engine)
        else:
            self._free(engine, name)

    def _free(self, engine: Engine, name: str) -> None:
        """Forget the engine (its memory leaves the budget now) and stop its loop."""
        if engine in self._draining:
            self._draining.remove(engine)
        if engine.llm is None:
            return
        llm, engine.llm = engine.llm, None
        self._stopping.add(asyncio.ensure_future(self._stop(llm, name, engine.memory_bytes)))

    async def _stop(self, llm: AsyncLLM, name: str, memory_bytes: int) -> None:
        await llm.shutdown()
        self._stopping.discard(asyncio.current_task())
        logger.info("freed an engine of %r (%s)", name, _size(memory_bytes))

    # -- idle unloading ------------------------------------------------------------------

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.idle_unload_s is not None and (self._reaper is None or self._reaper.done()):
            self._reaper = self._loop.create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        period = min(self.idle_unload_s / 4, 1.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for model in self:
                idle = now - model.last_used
                if _evictable(model) and idle >= self.idle_unload_s:
                    self._retire(model, f"idle for {idle:.0f} s (--idle-unload-s "
                                        f"{self.idle_unload_s:g})")

    def _call_soon(self, func, *args) -> None:
        """Run ``func`` on the manager's loop (a lease may be released from a finalizer)."""
        loop = self._loop or asyncio.get_running_loop()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
            loop.call_soon_threadsafe(func, *args)

    def _emit(self, kind: str, name: str, **details: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, name, details)


def _evictable(model: ManagedModel) -> bool:
    return (model.engine is not None and model.engine.leases == 0 and not model.spec.pinned
            and model.loading is None)


def _why_kept(model: ManagedModel) -> str:
    if model.engine is None:
        return "loading"
    if model.spec.pinned:
        return "pinned"
    return f"{model.engine.leases} requests in flight" if model.engine.leases else "idle"


def _size(num_bytes: int) -> str:
    """``1.50 GiB``, or ``12.3 MiB`` below a GiB."""
    if abs(num_bytes) >= GiB:
        return f"{num_bytes / GiB:.2f} GiB"
    return f"{num_bytes / (1 << 20):.1f} MiB"


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _measure(llm: AsyncLLM) -> int:
    try:
        return engine_tensor_bytes(llm)
    except AttributeError:  # an engine assembled without a model runner
        return 0
