"""What an engine reports about itself: what it serves (fixed at load) and its load now."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from octavo.kv_cache.tier import SwapStats


@dataclass(frozen=True)
class EngineInfo:
    """The loaded model and cache, fixed for the engine's life."""

    architecture: str  # the model class that serves it
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    vocab_size: int
    num_kv_blocks: int
    block_size: int


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load, for metrics and admission control."""

    num_running: int
    num_waiting: int
    num_swapped: int
    num_kv_blocks: int
    num_free_kv_blocks: int
    block_size: int
    kv_cache_usage: float  # fraction of blocks in use
    num_preemptions_swap: int = 0  # since start-up
    num_preemptions_recompute: int = 0
    swap: SwapStats = field(default_factory=SwapStats)  # the swap tier's blocks and traffic
