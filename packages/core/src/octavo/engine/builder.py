"""Assembling an engine core from settings, or from components chosen in code."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from octavo.config import CacheSettings, ModelSettings, SchedulerSettings
from octavo.engine.engine_core import EngineCore
from octavo.engine.model_runner import ModelRunner, allocate_kv_caches
from octavo.modeling import KVCacheSpec
from octavo.plugins import kv_cache_managers, schedulers

logger = logging.getLogger(__name__)

GiB = 1 << 30
DEFAULT_CPU_KV_CACHE_GIB = 1.0


@dataclass
class EngineConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)


def num_kv_blocks(cache: CacheSettings, spec: KVCacheSpec, dtype: torch.dtype,
                  device: torch.device, activation_bytes: int = 0) -> int:
    """How many blocks fit the byte budget (explicit, or free memory on CUDA)."""
    if cache.num_gpu_blocks_override is not None:
        return cache.num_gpu_blocks_override
    block_bytes = spec.bytes_per_token(dtype) * cache.block_size
    if cache.kv_cache_memory_gib is not None:
        budget = int(cache.kv_cache_memory_gib * GiB)
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = int(total * cache.gpu_memory_utilization) - (total - free) - activation_bytes
    else:
        budget = int(DEFAULT_CPU_KV_CACHE_GIB * GiB)
    num_blocks = budget // block_bytes
    if num_blocks <= 0:
        raise ValueError(f"no memory left for the KV cache (budget {budget / GiB:.2f} GiB); "
                         "lower the model size or raise kv_cache_memory_gib")
    return num_blocks


def estimate_activation_bytes(hf_config, scheduler: SchedulerSettings, dtype) -> int:
    """A generous bound on one step's activations, kept free beside the KV cache on CUDA."""
    elem = torch.empty((), dtype=dtype).element_size()
    hidden = hf_config.hidden_size
    inter = getattr(hf_config, "intermediate_size", 4 * hidden)
    tokens = scheduler.max_num_batched_tokens
    per_token = (4 * hidden + 3 * inter) * elem
    logits = scheduler.max_num_seqs * hf_config.vocab_size * 4 * 3
    return tokens * per_token + logits + GiB // 2


def build_engine_core(loaded, cache: CacheSettings, sched: SchedulerSettings,
                      max_model_len: int) -> EngineCore:
    """Wire the loaded model to a KV cache, a cache manager and a scheduler from the registries."""
    activations = estimate_activation_bytes(loaded.hf_config, sched, loaded.dtype)
    num_blocks = num_kv_blocks(cache, loaded.kv_spec, loaded.dtype, loaded.device, activations)
    logger.debug("KV cache: %d blocks of %d tokens", num_blocks, cache.block_size)
    kv_caches = allocate_kv_caches(loaded.kv_spec, num_blocks, cache.block_size, loaded.dtype,
                                   loaded.device)
    manager = kv_cache_managers().get(cache.kv_cache_manager)(
        num_blocks, cache.block_size, enable_prefix_caching=cache.enable_prefix_caching)
    scheduler = schedulers().get(sched.scheduler)(
        manager, max_num_batched_tokens=sched.max_num_batched_tokens,
        max_num_seqs=sched.max_num_seqs, max_model_len=max_model_len,
        enable_chunked_prefill=sched.enable_chunked_prefill,
        long_prefill_token_threshold=sched.long_prefill_token_threshold)
    runner = ModelRunner(loaded.model, kv_caches, cache.block_size, loaded.device)
    return EngineCore(scheduler, runner)
