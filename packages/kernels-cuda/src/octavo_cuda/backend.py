"""The CUDA C++ PagedAttention backend."""

from __future__ import annotations

from typing import ClassVar

import torch

from octavo.attention.base import AttentionBackend, AttentionMetadata
from octavo_cuda.build import load_ops, missing_toolchain


class CudaAttentionBackend(AttentionBackend):
    """Hand-written CUDA kernels: cache write plus one paged attention kernel for decodes and
    prefill chunks alike (GQA, sliding window, ALiBi, logits soft cap; float32 accumulation).

    Constructing the first instance builds the kernels (JIT, cached on disk; see
    :mod:`octavo_cuda.build`), so no build ever happens inside a forward or a graph capture.

    fp16/bf16 requests with 16 or more new tokens (prefill chunks) run on a tensor-core (WMMA)
    kernel on compute capability 8.0+; decodes and short chunks on the CUDA-core kernel.

    Args:
        partition_size: split-KV control for tests and tuning; 0 (default) decides per call,
            > 0 forces KV partitions of about that many tokens, < 0 never splits.
        tensor_cores: False keeps every request on the CUDA-core kernel.
    """

    name = "cuda"
    # Below Triton (10): the Triton kernels measured faster on the last GPU run, and this
    # version's tensor-core prefill has not run on hardware yet (docs/benchmarks.md, "GPU").
    # Select it with attention_backend="cuda"; raise it once it measures faster.
    priority = 5
    supported_devices: ClassVar[tuple[str, ...]] = ("cuda",)
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = (64, 80, 96, 128, 256)

    def __init__(self, *args, partition_size: int = 0, tensor_cores: bool = True,
                 **kwargs) -> None:  # the rest: AttentionBackend's arguments
        super().__init__(*args, **kwargs)
        self.partition_size = int(partition_size)
        self.tensor_cores = bool(tensor_cores)
        self._slopes: dict[torch.device, torch.Tensor] = {}
        ops = load_ops()
        self._reshape_and_cache = ops.reshape_and_cache
        self._paged_attention = ops.paged_attention

    @classmethod
    def unsupported_reason(cls, device: torch.device | str, dtype: torch.dtype,
                           head_size: int) -> str | None:
        return super().unsupported_reason(device, dtype, head_size) or missing_toolchain()

    def _alibi_on(self, device: torch.device) -> torch.Tensor | None:
        if self.alibi_slopes is None:
            return None
        slopes = self._slopes.get(device)
        if slopes is None:
            slopes = self.alibi_slopes.to(device=device, dtype=torch.float32).contiguous()
            self._slopes[device] = slopes
        return slopes

    def forward(self, query, key, value, key_cache, value_cache,
                metadata: AttentionMetadata) -> torch.Tensor:  # shapes: AttentionBackend.forward
        self._reshape_and_cache(key, value, key_cache, value_cache, metadata.slot_mapping)
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        self._paged_attention(
            out, query, key_cache, value_cache, metadata.block_tables, metadata.seq_lens,
            metadata.query_start_loc, metadata.max_query_len, metadata.max_seq_len,
            float(self.scale), self._alibi_on(query.device), int(self.sliding_window or 0),
            float(self.logits_soft_cap or 0.0), self.partition_size, self.tensor_cores)
        return out
