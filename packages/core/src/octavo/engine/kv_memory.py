"""How many KV cache blocks fit: an explicit count, a byte budget, or the free CUDA memory."""

from __future__ import annotations

import torch

from octavo.config import CacheSettings, SchedulerSettings
from octavo.modeling import KVCacheSpec
from octavo.platforms import platform_for

GiB = 1 << 30
DEFAULT_CPU_KV_CACHE_GIB = 1.0


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
