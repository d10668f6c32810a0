"""One tensor-parallel rank: its model shard, its KV cache shard and the forward pass.

A ``Worker`` lives in its own process (``mp``) or Ray actor (``ray``); the driver's executor
calls its methods by name, in the same order on every rank, so that their collectives meet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from octavo.engine.kv_memory import estimate_activation_bytes, num_kv_blocks
from octavo.engine.model_runner import ModelInput, ModelOutput, ModelRunner, allocate_kv_caches
from octavo.modeling import ParallelConfig

if TYPE_CHECKING:
    from octavo.engine.builder import EngineConfig


@dataclass(frozen=True)
class WorkerInfo:
    """What a rank reports once its shard is loaded."""

    architecture: str
    dtype: torch.dtype
    num_kv_blocks: int  # the blocks this rank's memory holds


class Worker:
    """Rank ``rank`` of ``world_size``; joins the process group at ``init_method``."""

    def __init__(self, config: EngineConfig, rank: int, world_size: int, init_method: str,
                 num_threads: int | None = None) -> None:
        self.config = config
        self.parallel = ParallelConfig(tensor_parallel_size=world_size, rank=rank)
        self.init_method = init_method
        self.num_threads = num_threads
        self.loaded = None
        self.runner: ModelRunner | None = None

    def load(self) -> WorkerInfo:
        """Join the process group (gloo on the CPU, NCCL on CUDA), load this rank's shard and
        measure how many KV blocks fit beside it."""
        from octavo.model_loader.loader import load_model, resolve_device

        if self.num_threads:
            torch.set_num_threads(self.num_threads)  # the ranks share the machine's cores
        device = resolve_device(self.config.model.device)
        if device.type == "cuda":
            torch.cuda.set_device(self.parallel.rank % torch.cuda.device_count())
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", init_method=self.init_method,
            rank=self.parallel.rank, world_size=self.parallel.tensor_parallel_size)
        torch.manual_seed(self.config.model.seed)
        self.loaded = loaded = load_model(self.config.model, self.parallel)
        activations = estimate_activation_bytes(loaded.hf_config, self.config.scheduler,
                                                loaded.dtype)
        blocks = num_kv_blocks(self.config.cache, loaded.kv_spec, loaded.dtype, loaded.device,
                               activations)
        return WorkerInfo(type(loaded.model).__name__, loaded.dtype, blocks)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Allocate this rank's KV cache shard (the same block count on every rank)."""
        loaded, block_size = self.loaded, self.config.cache.block_size
        caches = allocate_kv_caches(loaded.kv_spec, num_blocks, block_size, loaded.dtype,
                                    loaded.device)
        self.runner = ModelRunner(loaded.model, caches, block_size, loaded.device)

    def execute_model(self, batch: ModelInput) -> ModelOutput | None:
        """Run the step; rank 0 returns the logits (on the CPU) for the driver to sample."""
        output = self.runner.run(batch)
        if self.parallel.rank != 0:
            return None
        if output.logits is not None:
            output.logits = output.logits.cpu()
        return output

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        self.runner.copy_blocks(copies)

    def pid(self) -> int:
        """This rank's process id (tests check that none outlives the engine)."""
        return os.getpid()
