"""The attention backend interface and the metadata of one packed batch.

KV cache layout, shared by every backend (per layer)::

    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size]

A token at position ``pos`` of request ``r`` lives in slot
``block_tables[r, pos // block_size] * block_size + pos % block_size``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, final

import torch

T = TypeVar("T")


@dataclass
class AttentionMetadata:
    """Describes one packed batch of ``num_tokens`` tokens from ``num_seqs`` requests.

    Request ``i`` owns query tokens ``query_start_loc[i]:query_start_loc[i + 1]``, which are
    its positions ``seq_lens[i] - query_len_i .. seq_lens[i] - 1`` (its newest tokens).
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64, where each new K/V is written
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [num_seqs] int32, context length incl. the new tokens
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    max_query_len: int
    max_seq_len: int
    query_start_loc_cpu: list[int]  # host copies, so backends need not synchronize
    seq_lens_cpu: list[int]
    # derived(): builder -> its result for this metadata, shared by every layer of the step.
    _derived: dict[Callable[[AttentionMetadata], Any], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc_cpu[-1]

    def derived(self, build: Callable[[AttentionMetadata], T]) -> T:
        """``build(self)``, computed on the first call and cached for the rest of the step.

        Backends keep what they derive from the batch (index tensors, launch plans) here
        instead of rebuilding it in every layer. The cache is keyed by ``build`` itself, so
        pass a module-level function (a new lambda or ``partial`` per call would never hit);
        a builder that needs a parameter is one function per value of it. ``build`` must
        depend on the metadata only, which is never changed after it is built.
        """
        try:
            return self._derived[build]
        except KeyError:
            value = self._derived[build] = build(self)
            return value


class AttentionBackend(ABC):
    """Paged attention for one layer: writes the new K/V into the cache, then attends.

    Subclasses declare what they support (``supported_devices``, ``supported_dtypes``,
    ``supported_head_sizes`` or ``max_head_size``); a limit the tables cannot express (a
    missing compiler, no GPU) goes in an override of :meth:`unsupported_reason`, which
    calls ``super()`` for the tables. The engine picks the supported backend with the highest
    ``priority`` unless the user names one.
    """

    name: ClassVar[str]
    supported_devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (
        torch.float32, torch.float16, torch.bfloat16)
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = None  # None: any up to the max
    max_head_size: ClassVar[int | None] = None  # None: no upper limit
    priority: ClassVar[int] = 0
    # Optional features; a backend that sets one to False is refused a layer that needs it.
    supports_alibi: ClassVar[bool] = True
    supports_sliding_window: ClassVar[bool] = True
    supports_logits_soft_cap: ClassVar[bool] = True

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        num_kv_heads: int,
        scale: float,
        *,
        alibi_slopes: torch.Tensor | None = None,  # [num_heads] float32
        sliding_window: int | None = None,  # attend to at most this many latest positions
        logits_soft_cap: float | None = None,
    ) -> None:
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        for feature, value in (("alibi", alibi_slopes), ("sliding_window", sliding_window),
                               ("logits_soft_cap", logits_soft_cap)):
            if value is not None and not getattr(self, f"supports_{feature}"):
                raise ValueError(f"attention backend {self.name!r} does not support {feature}")
        if alibi_slopes is not None and alibi_slopes.numel() != num_heads:
            raise ValueError(f"alibi_slopes has {alibi_slopes.numel()} entries, "
                             f"expected num_heads={num_heads}")
        if sliding_window is not None and sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive, got {sliding_window}")
        if logits_soft_cap is not None and logits_soft_cap <= 0:
            raise ValueError(f"logits_soft_cap must be positive, got {logits_soft_cap}")
        reason = self._head_size_reason(head_size)
        if reason is not None:
            raise ValueError(f"attention backend {self.name!r}: {reason}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.alibi_slopes = alibi_slopes
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "supports" in cls.__dict__:
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} overrides supports(); override "
                "unsupported_reason() instead (return why the backend cannot run, or None), "
                "so the engine can log the reason. supports() is derived from it.")

    @final
    @classmethod
    def supports(cls, device: torch.device | str, dtype: torch.dtype, head_size: int) -> bool:
        """Whether :meth:`unsupported_reason` finds nothing against it. Do not override."""
        return cls.unsupported_reason(device, dtype, head_size) is None

    @classmethod
    def unsupported_reason(cls, device: torch.device | str, dtype: torch.dtype,
                           head_size: int) -> str | None:
        """Why this backend cannot run here (logged when the engine falls back), else None.

        The base class checks the declared tables; an override adds its own conditions after
        ``super().unsupported_reason(...)`` and says what is missing.
        """
        device_type = torch.device(device).type
        if device_type not in cls.supported_devices:
            return f"device {device_type!r} is not one of {', '.join(cls.supported_devices)}"
        if dtype not in cls.supported_dtypes:
            return f"dtype {dtype} is not supported"
        return cls._head_size_reason(head_size)

    @classmethod
    def _head_size_reason(cls, head_size: int) -> str | None:
        if cls.supported_head_sizes is not None:
            if head_size not in cls.supported_head_sizes:
                return f"head size {head_size} is not one of {cls.supported_head_sizes}"
            return None
        if head_size < 1:
            return f"head size {head_size} is not positive"
        if cls.max_head_size is not None and head_size > cls.max_head_size:
            return f"head size {head_size} is outside 1..{cls.max_head_size}"
        return None

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_size]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_size]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_size]
        value_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_size]
        """Write ``key``/``value`` at ``metadata.slot_mapping``, then attend causally."""
