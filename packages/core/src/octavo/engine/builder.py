"""Assembling an engine core from settings, or from components chosen in code."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from octavo.config import CacheSettings, ModelSettings, SchedulerSettings
from octavo.engine.engine_core import EngineCore
from octavo.engine.model_runner import ModelRunner, allocate_kv_caches
from octavo.engine.preemption import PreemptionPolicy, make_preemption_policy
from octavo.kv_cache.manager import KVCacheManager
from octavo.kv_cache.swapper import TierUnavailable
from octavo.kv_cache.tier import KVTier
from octavo.modeling import KVCaches, KVCacheSpec
from octavo.platforms import platform_for
from octavo.plugins import kv_cache_managers, schedulers, swappers

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
    """How many blocks fit the byte budget: explicit, or what the platform's free memory
    allows (CUDA), or a fixed default where the platform reports none (the CPU)."""
    if cache.num_gpu_blocks_override is not None:
        return cache.num_gpu_blocks_override
    block_bytes = spec.bytes_per_token(dtype) * cache.block_size
    if cache.kv_cache_memory_gib is not None:
        budget = int(cache.kv_cache_memory_gib * GiB)
    elif (memory := platform_for(device).memory_info(device)) is not None:
        free, total = memory  # the platform's device memory (CUDA's)
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
    tier = build_tier(cache, kv_caches, manager)
    scheduler = schedulers().get(sched.scheduler)(
        manager, max_num_batched_tokens=sched.max_num_batched_tokens,
        max_num_seqs=sched.max_num_seqs, max_model_len=max_model_len,
        enable_chunked_prefill=sched.enable_chunked_prefill,
        long_prefill_token_threshold=sched.long_prefill_token_threshold,
        preemption=build_preemption_policy(sched.preemption_mode, tier, cache.block_size))
    runner = ModelRunner(loaded.model, kv_caches, cache.block_size, loaded.device)
    return EngineCore(scheduler, runner)


def build_tier(cache: CacheSettings, kv_caches: KVCaches,
               manager: KVCacheManager) -> KVTier | None:
    """The swap tier ``swap_space_gib`` asks for, from the ``kv_offload`` swapper, attached to
    the manager; None (recompute only) with a warning when it cannot be set up."""
    if not cache.swap_space_gib:
        return None
    swapper_class = swappers().get(cache.kv_offload)
    block_bytes = sum(c[0].numel() * c.element_size() for layer in kv_caches for c in layer)
    num_blocks = int(cache.swap_space_gib * GiB) // block_bytes
    if num_blocks <= 0:
        logger.warning("swap_space_gib=%s holds no KV block (%d bytes each): no swap tier",
                       cache.swap_space_gib, block_bytes)
        return None
    try:
        tier = KVTier(swapper_class(kv_caches, num_blocks, directory=cache.kv_offload_dir))
        manager.attach_tier(tier)
    except (TierUnavailable, NotImplementedError) as exc:
        logger.warning("no swap tier, preempted requests are recomputed: %s", exc)
        return None
    logger.info("swap tier %r: %d blocks (%.2f GiB)", cache.kv_offload, num_blocks,
                num_blocks * block_bytes / GiB)
    return tier


def build_preemption_policy(mode: str, tier: KVTier | None, block_size: int) -> PreemptionPolicy:
    """The ``preemption_mode`` policy; ``auto`` measures the tier's copy bandwidth now."""
    bandwidth = tier.swapper.measure_bandwidth() if tier is not None and mode == "auto" else None
    if bandwidth:
        logger.info("swap tier round trip: %.2f GB/s", bandwidth / 1e9)
    return make_preemption_policy(mode, copy_bytes_per_s=bandwidth,
                                  block_bytes=tier.block_bytes if tier else 0,
                                  block_size=block_size)
