"""One engine step: schedule, execute, update."""

from __future__ import annotations

from collections.abc import Iterable

from octavo.engine.model_runner import ModelRunner
from octavo.engine.outputs import EngineCoreOutput
from octavo.engine.request import Request
from octavo.engine.scheduler import Scheduler


class EngineCore:
    """Composes a scheduler (which owns the KV cache manager) and a model runner."""

    def __init__(self, scheduler: Scheduler, runner: ModelRunner) -> None:
        self.scheduler = scheduler
        self.runner = runner

    def add_request(self, request: Request) -> None:
        self.scheduler.add_request(request)

    def abort_requests(self, req_ids: Iterable[str]) -> list[EngineCoreOutput]:
        return self.scheduler.abort_requests(req_ids)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def reset_prefix_cache(self) -> None:
        """Drop the KV cache manager's cached prefixes (a manager without a block pool caches
        none)."""
        pool = getattr(self.scheduler.kv_cache, "pool", None)
        if pool is not None:
            pool.reset_prefix_cache()

    def step(self) -> list[EngineCoreOutput]:
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            return scheduled.finished
        result = self.runner.execute(scheduled)
        return self.scheduler.update(scheduled, result)
