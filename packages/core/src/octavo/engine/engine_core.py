"""One engine step: schedule, execute, update."""

from __future__ import annotations

import time
from collections.abc import Iterable

from octavo.engine.executor import Executor
from octavo.engine.outputs import EngineCoreOutput
from octavo.engine.scheduler import Scheduler
from octavo.engine.stats import EngineStats
from octavo.request import Request


class EngineCore:
    """Composes a scheduler (which owns the KV cache manager) and an executor (``runner``: a
    ``ModelRunner`` in this process, or the driver of tensor-parallel workers)."""

    def __init__(self, scheduler: Scheduler, runner: Executor) -> None:
        self.scheduler = scheduler
        self.runner = runner

    def add_request(self, request: Request) -> None:
        self.scheduler.add_request(request)

    def check_request(self, request: Request) -> None:
        """ValueError if the scheduler could never run the request (see
        ``Scheduler.check_request``)."""
        self.scheduler.check_request(request)

    def abort_requests(self, req_ids: Iterable[str]) -> list[EngineCoreOutput]:
        return self.scheduler.abort_requests(req_ids)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def reset_prefix_cache(self) -> None:
        self.scheduler.reset_prefix_cache()

    def shutdown(self) -> None:
        """Stop the executor's workers, if it has any."""
        self.runner.shutdown()

    def stats(self) -> EngineStats:
        counts = self.scheduler.request_counts()
        kv_cache = self.scheduler.kv_cache
        preemptions = self.scheduler.preemption_counts()
        return EngineStats(
            num_running=counts.running, num_waiting=counts.waiting, num_swapped=counts.swapped,
            num_kv_blocks=kv_cache.num_blocks, num_free_kv_blocks=kv_cache.num_free_blocks,
            block_size=kv_cache.block_size, kv_cache_usage=kv_cache.usage(),
            num_preemptions_swap=preemptions.get("swap", 0),
            num_preemptions_recompute=preemptions.get("recompute", 0),
            swap=kv_cache.swap_stats())

    def step(self) -> list[EngineCoreOutput]:
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            return scheduled.finished
        start = time.perf_counter()
        result = self.runner.execute(scheduled)
        self.scheduler.observe_step(scheduled.num_tokens, time.perf_counter() - start)
        return self.scheduler.update(scheduled, result)
