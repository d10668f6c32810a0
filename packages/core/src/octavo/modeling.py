"""The interface every model family implements, and what the engine hands a model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from octavo.attention.base import AttentionBackend, AttentionMetadata
    from octavo.layers.quantization import QuantizationMethod

# Per layer ``(key_cache, value_cache)``, each [num_blocks, block_size, num_kv_heads, head_size].
KVCaches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ParallelConfig:
    """This process's place in tensor parallelism: the number of ranks and its own rank.

    Layers shard their weights and reduce their outputs by it, over the default
    ``torch.distributed`` process group (tested with 2 ranks over gloo). The engine itself
    runs one rank today and always builds models with the default (1, 0); a caller that sets
    up a process group may build a model with another.
    """

    tensor_parallel_size: int = 1
    rank: int = 0


@dataclass
class ModelContext:
    """Everything a model needs to build its layers besides its HF config."""

    attention_backend: type[AttentionBackend]
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    quantization: QuantizationMethod | None = None


class CausalLM(nn.Module, ABC):
    """A decoder-only language model over a packed batch of tokens and a paged KV cache.

    ``kv_caches[layer] = (key_cache, value_cache)``, each
    ``[num_blocks, block_size, num_kv_heads, head_size]``.
    """

    def __init__(self, config: Any, ctx: ModelContext) -> None:
        super().__init__()
        self.config = config
        self.ctx = ctx

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        positions: torch.Tensor,  # [num_tokens] int64
        kv_caches: KVCaches,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # hidden states [num_tokens, hidden_size]
        ...

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, vocab_size] float32
        ...

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load HF-named tensors; return the parameter names that were filled."""

    @classmethod
    def adapt_config(cls, config: Any) -> Any:
        """The config as this family reads it.

        Called once by the loader; the constructor and :meth:`kv_cache_spec` receive its
        result (as does the loader, which sizes the context and cache from it), so they never
        adapt again and adapting need not be idempotent. Code that builds a model without the
        loader (tests) calls it first. Families whose checkpoints spell config fields their own
        way (remote-code layouts such as QWen or Baichuan) return a normalized copy; the default
        returns ``config`` itself.
        """
        return config

    @classmethod
    def kv_cache_spec(cls, config: Any) -> KVCacheSpec:
        """Shape of the KV cache this model needs, from the adapted config (HF Llama-style field
        names by default; a family whose layout is described otherwise, such as a
        ``DecoderSpec``, overrides it)."""
        num_heads = config.num_attention_heads
        head_size = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        return KVCacheSpec(
            num_layers=config.num_hidden_layers,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_size=head_size,
        )


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_size: int

    def for_rank(self, parallel: ParallelConfig) -> KVCacheSpec:
        """The share of one tensor-parallel rank (KV heads replicate when fewer than ranks)."""
        heads = max(self.num_kv_heads // parallel.tensor_parallel_size, 1)
        return KVCacheSpec(self.num_layers, heads, self.head_size)

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_size * elem
