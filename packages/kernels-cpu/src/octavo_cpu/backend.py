"""The CPU PagedAttention backend: a C++ kernel for decodes and short chunks, SDPA for prefill."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from octavo.attention.base import AttentionBackend, AttentionMetadata
from octavo.attention.torch_backend import gather_kv, write_kv_cache
from octavo_cpu.build import load_ops, unavailable_reason

# Requests with at least this many new tokens (prefill chunks) run on torch's fused
# scaled_dot_product_attention over their gathered context; the kernel reads every context
# row once per query token, which a long chunk would repeat thousands of times (the
# measurements are in this package's README, "Where the SDPA threshold comes from").
SDPA_MIN_QUERY_LEN = 16


@dataclass(frozen=True)
class CpuPlan:
    """Which requests of a batch the kernel attends and which SDPA does."""

    kernel_seqs: torch.Tensor  # [n] int32, request indices for the kernel
    sdpa_seqs: list[int]  # request indices for SDPA (long prefill chunks)


def _split(metadata: AttentionMetadata, sdpa_min_query_len: int | None) -> CpuPlan:
    starts = metadata.query_start_loc_cpu
    kernel, sdpa = [], []
    for i in range(metadata.num_seqs):
        query_len = starts[i + 1] - starts[i]
        if query_len == 0:
            continue
        long_chunk = sdpa_min_query_len is not None and query_len >= sdpa_min_query_len
        (sdpa if long_chunk else kernel).append(i)
    return CpuPlan(torch.tensor(kernel, dtype=torch.int32), sdpa)


def sdpa_split_plan(metadata: AttentionMetadata) -> CpuPlan:
    """Plain causal layers: chunks of ``SDPA_MIN_QUERY_LEN`` or more tokens go to SDPA."""
    return _split(metadata, SDPA_MIN_QUERY_LEN)


def kernel_only_plan(metadata: AttentionMetadata) -> CpuPlan:
    """Layers with ALiBi, a window or a soft cap (which SDPA lacks): all go to the kernel."""
    return _split(metadata, None)


class CpuAttentionBackend(AttentionBackend):
    """C++ paged attention on the CPU (float32 accumulation, GQA/MQA, ALiBi, sliding window,
    logits soft cap): each query reads its context straight from the cache blocks in one pass
    with an online softmax, instead of gathering a padded copy.

    Constructing the first instance builds the kernel (JIT with the host compiler, about
    10 s once per machine, then cached on disk; see :mod:`octavo_cpu.build`).
    """

    name = "cpu"
    # Above the torch backend (0), the CPU path it replaces.
    priority = 5
    supported_devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, num_heads: int, head_size: int, num_kv_heads: int, scale: float, *,
                 alibi_slopes: torch.Tensor | None = None, sliding_window: int | None = None,
                 logits_soft_cap: float | None = None) -> None:
        super().__init__(num_heads, head_size, num_kv_heads, scale, alibi_slopes=alibi_slopes,
                         sliding_window=sliding_window, logits_soft_cap=logits_soft_cap)
        self._slopes = (alibi_slopes.detach().to("cpu", torch.float32).contiguous()
                        if alibi_slopes is not None else None)
        # SDPA covers plain causal attention only; with a feature every request takes the kernel.
        plain = alibi_slopes is None and sliding_window is None and logits_soft_cap is None
        self._plan: Callable[[AttentionMetadata], CpuPlan] = (
            sdpa_split_plan if plain else kernel_only_plan)
        self._paged_attention = load_ops().paged_attention
        self._write_kv_cache = load_ops().write_kv_cache

    @classmethod
    def unsupported_reason(cls, device: torch.device | str, dtype: torch.dtype,
                           head_size: int) -> str | None:
        return super().unsupported_reason(device, dtype, head_size) or unavailable_reason()

    def forward(self, query, key, value, key_cache, value_cache, metadata: AttentionMetadata):
        if key.dtype == key_cache.dtype and key_cache.is_contiguous():  # one C++ op
            self._write_kv_cache(key, value, key_cache, value_cache, metadata.slot_mapping)
        else:  # a cache in another dtype (or layout): torch converts and scatters
            write_kv_cache(key, value, key_cache, value_cache, metadata.slot_mapping)
        query = query.contiguous()
        out = torch.empty_like(query)
        plan = metadata.derived(self._plan)  # once per step, shared by the layers
        kernel_seqs = plan.kernel_seqs
        if kernel_seqs.numel():
            self._paged_attention(
                out, query, key_cache, value_cache, metadata.block_tables.contiguous(),
                metadata.seq_lens.contiguous(), metadata.query_start_loc.contiguous(),
                kernel_seqs, self.scale, self._slopes, self.sliding_window or 0,
                self.logits_soft_cap or 0.0)
        starts = metadata.query_start_loc_cpu
        for i in plan.sdpa_seqs:
            lo, hi = starts[i], starts[i + 1]
            out[lo:hi] = self._prefill(query[lo:hi], key_cache, value_cache,
                                       metadata.block_tables[i], metadata.seq_lens_cpu[i])
        return out

    def _prefill(self, query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Causal attention of one request's chunk (its newest tokens) over its context."""
        query_len = query.shape[0]
        q = query.transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
        k = gather_kv(key_cache, block_table, seq_len).transpose(0, 1).unsqueeze(0)
        v = gather_kv(value_cache, block_table, seq_len).transpose(0, 1).unsqueeze(0)
        gqa = self.num_heads != self.num_kv_heads
        if query_len == seq_len:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                                 enable_gqa=gqa)
        else:  # a later chunk: its rows see the cached context too
            positions = torch.arange(seq_len)
            mask = positions[None, :] <= positions[seq_len - query_len:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                                 enable_gqa=gqa)
        return out[0].transpose(0, 1)
