"""What the engine core calls to run a step: an executor, over one rank or several.

``ModelRunner`` is the executor of one rank in this process (``uni``); ``MultiprocExecutor``
(``mp``) and ``RayExecutor`` (``ray``) drive tensor-parallel ``Worker``s in other processes.
docs/distributed.md describes the split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from octavo.engine.outputs import RunnerOutput, SchedulerOutput


class EngineDeadError(RuntimeError):
    """The engine cannot run another step: a worker died or failed. Its workers are shut down;
    build a new engine (a server exits so that its supervisor restarts it)."""


class Executor(ABC):
    """Runs scheduled steps on the model's ranks and samples their next tokens."""

    block_size: int

    @property
    @abstractmethod
    def architecture(self) -> str:
        """The model class's name."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The dtype of the weights and the KV cache."""

    @abstractmethod
    def execute(self, scheduled: SchedulerOutput) -> RunnerOutput:
        """Copy-on-write blocks, run the forward pass on every rank, sample.

        Raises:
            EngineDeadError: a worker died or failed; the executor has shut down.
        """

    @abstractmethod
    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Duplicate KV blocks ``(src, dst)`` on every rank."""

    def check_health(self) -> None:
        """Raise ``EngineDeadError`` if a worker is gone (a single process is always healthy)."""
        return

    def shutdown(self) -> None:
        """Stop the workers (nothing to stop in a single process); safe to call twice."""
        return
