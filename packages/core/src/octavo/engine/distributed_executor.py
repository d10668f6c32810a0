"""The driver side of tensor parallelism: one ``Worker`` per rank, elsewhere.

Each step the driver packs the batch once (:func:`prepare_input`), every rank runs the
forward pass on it, rank 0 sends back the logits of the sampling rows, and the driver
samples them: requests, their seeded generators and their token histories stay in the driver,
so sampling is the single-process code, token for token (docs/distributed.md, "Who samples").

A worker that dies or fails kills the executor: it stops the other workers and raises
``EngineDeadError`` now and on every later call.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import torch

from octavo.engine.executor import EngineDeadError, Executor
from octavo.engine.model_runner import prepare_input, sample_output
from octavo.engine.sampler import Sampler

if TYPE_CHECKING:
    from octavo.engine.builder import EngineConfig
    from octavo.engine.outputs import RunnerOutput, SchedulerOutput
    from octavo.engine.worker import WorkerInfo

logger = logging.getLogger(__name__)


class WorkerFailure(Exception):
    """A transport's report that a worker died or raised; the executor turns it into
    ``EngineDeadError`` after shutting down."""


class DistributedExecutor(Executor):
    """Drives ``tensor_parallel_size`` workers; subclasses start them and carry the calls."""

    def __init__(self, config: EngineConfig) -> None:
        self.block_size = config.cache.block_size
        self.world_size = config.parallel.tensor_parallel_size
        self.sampler = Sampler()
        self._dead: str | None = None
        try:
            self._start_workers(config)
            infos: list[WorkerInfo] = self._call_all("load")
        except BaseException:
            self.shutdown()
            raise
        self.num_blocks = min(info.num_kv_blocks for info in infos)  # every rank holds them
        self._call_all("allocate_kv_cache", self.num_blocks)
        self._architecture, self._dtype = infos[0].architecture, infos[0].dtype
        logger.info("%d tensor-parallel ranks (%s), %d KV blocks each", self.world_size,
                    type(self).__name__, self.num_blocks)

    @property
    def architecture(self) -> str:
        return self._architecture

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def execute(self, scheduled: SchedulerOutput) -> RunnerOutput:
        output = self._call_all("execute_model", prepare_input(scheduled, self.block_size))[0]
        return sample_output(self.sampler, scheduled, output)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if copies:
            self._call_all("copy_blocks", copies)

    def worker_pids(self) -> list[int]:
        """The process id of each rank, in rank order."""
        return self._call_all("pid")

    def check_health(self) -> None:
        if self._dead is None:
            try:
                self._check_workers()
            except WorkerFailure as exc:
                self._die(exc)
        if self._dead is not None:
            raise EngineDeadError(self._dead)

    def shutdown(self) -> None:
        self._stop_workers()

    def _call_all(self, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every rank with the same arguments; their results in rank order."""
        if self._dead is not None:
            raise EngineDeadError(self._dead)
        try:
            return self._call(method, args)
        except WorkerFailure as exc:
            self._die(exc)
            raise EngineDeadError(self._dead) from exc

    def _die(self, exc: WorkerFailure) -> None:
        self._dead = f"the engine is dead: {exc}"
        logger.error("%s; stopping the other workers", self._dead)
        self._stop_workers()

    @abstractmethod
    def _start_workers(self, config: EngineConfig) -> None:
        """Start one worker per rank (not loaded yet)."""

    @abstractmethod
    def _call(self, method: str, args: tuple) -> list[Any]:
        """Run ``method(*args)`` on every worker; ``WorkerFailure`` if one dies or raises."""

    @abstractmethod
    def _check_workers(self) -> None:
        """``WorkerFailure`` if a worker is gone, without a round trip when possible."""

    @abstractmethod
    def _stop_workers(self) -> None:
        """Stop every worker that still runs, and wait until it is gone; safe to call twice."""

