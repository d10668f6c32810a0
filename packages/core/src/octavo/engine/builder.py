"""Assembling an engine core from settings, or from components chosen in code."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from octavo.config import CacheSettings, ModelSettings, ParallelSettings, SchedulerSettings
from octavo.engine.engine_core import EngineCore
from octavo.engine.executor import Executor
from octavo.engine.kv_memory import GiB, estimate_activation_bytes, num_kv_blocks
from octavo.engine.model_runner import ModelRunner, allocate_kv_caches
from octavo.engine.preemption import PreemptionPolicy, make_preemption_policy
from octavo.kv_cache.manager import KVCacheManager
from octavo.kv_cache.swapper import TierUnavailable
from octavo.kv_cache.tier import KVTier
from octavo.modeling import KVCaches
from octavo.plugins import kv_cache_managers, schedulers, swappers

logger = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)


def build_engine_core(loaded, cache: CacheSettings, sched: SchedulerSettings,
                      max_model_len: int) -> EngineCore:
    """Wire the loaded model to a KV cache, a cache manager and a scheduler from the registries."""
    activations = estimate_activation_bytes(loaded.hf_config, sched, loaded.dtype)
    num_blocks = num_kv_blocks(cache, loaded.kv_spec, loaded.dtype, loaded.device, activations)
    logger.debug("KV cache: %d blocks of %d tokens", num_blocks, cache.block_size)
    kv_caches = allocate_kv_caches(loaded.kv_spec, num_blocks, cache.block_size, loaded.dtype,
                                   loaded.device)
    runner = ModelRunner(loaded.model, kv_caches, cache.block_size, loaded.device)
    return assemble_engine_core(runner, num_blocks, cache, sched, max_model_len, kv_caches)


def assemble_engine_core(executor: Executor, num_blocks: int, cache: CacheSettings,
                         sched: SchedulerSettings, max_model_len: int,
                         kv_caches: KVCaches | None = None) -> EngineCore:
    """A cache manager of ``num_blocks``, a swap tier over ``kv_caches`` (this process's; None
    when the ranks' caches live in workers) and a scheduler, around ``executor``."""
    manager = kv_cache_managers().get(cache.kv_cache_manager)(
        num_blocks, cache.block_size, enable_prefix_caching=cache.enable_prefix_caching)
    if kv_caches is None and cache.swap_space_gib:
        logger.warning("swap_space_gib is not supported with tensor parallelism yet: "
                       "preempted requests are recomputed")
    tier = build_tier(cache, kv_caches, manager) if kv_caches is not None else None
    scheduler = schedulers().get(sched.scheduler)(
        manager, max_num_batched_tokens=sched.max_num_batched_tokens,
        max_num_seqs=sched.max_num_seqs, max_model_len=max_model_len,
        enable_chunked_prefill=sched.enable_chunked_prefill,
        long_prefill_token_threshold=sched.long_prefill_token_threshold,
        preemption=build_preemption_policy(sched.preemption_mode, tier, cache.block_size))
    return EngineCore(scheduler, executor)


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


def start_distributed_executor(config: EngineConfig) -> Executor:
    """The ``mp`` or ``ray`` executor that ``config.parallel`` names, its workers loaded."""
    backend = config.parallel.executor_backend
    if backend == "mp":
        from octavo.engine.mp_executor import MultiprocExecutor

        return MultiprocExecutor(config)
    if backend == "ray":
        from octavo.engine.ray_executor import RayExecutor

        return RayExecutor(config)
    raise ValueError(f"distributed_executor_backend {backend!r} does not start workers")
