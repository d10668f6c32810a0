"""What happens to a preempted request's KV blocks: dropped and recomputed later, or swapped
out to the KV cache manager's tier and swapped back in when the request resumes."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter

from octavo.kv_cache.manager import KVCacheManager
from octavo.request import Request

logger = logging.getLogger(__name__)

PREEMPTION_MODES = ("auto", "swap", "recompute")


class PreemptionPolicy(ABC):
    """Frees a victim's device blocks one way or another; counts preemptions by mode."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @abstractmethod
    def preempt(self, request: Request, kv_cache: KVCacheManager) -> str:
        """Free the request's device blocks; return the mode used, swap or recompute."""

    def observe_step(self, num_tokens: int, seconds: float) -> None:
        """One step computed ``num_tokens`` tokens in ``seconds`` (feeds cost estimates)."""
        return None

    def _recompute(self, request: Request, kv_cache: KVCacheManager) -> str:
        logger.debug("request %s preempted: %d tokens to recompute", request.req_id,
                     request.num_computed_tokens)
        kv_cache.free(request)
        request.num_computed_tokens = 0
        self.counts["recompute"] += 1
        return "recompute"


class RecomputePreemption(PreemptionPolicy):
    def preempt(self, request, kv_cache):
        return self._recompute(request, kv_cache)


class SwapPreemption(PreemptionPolicy):
    """Swap out when the tier has room, else recompute (with a warning, once)."""

    def __init__(self) -> None:
        super().__init__()
        self._warned = False

    def preempt(self, request, kv_cache):
        if self.should_swap(request, kv_cache):
            if kv_cache.swap_out(request):
                logger.debug("request %s preempted: %d computed tokens swapped out",
                             request.req_id, request.num_computed_tokens)
                self.counts["swap"] += 1
                return "swap"
            self._warn_full(request)
        return self._recompute(request, kv_cache)

    def should_swap(self, request: Request, kv_cache: KVCacheManager) -> bool:
        return request.num_computed_tokens > 0

    def _warn_full(self, request: Request) -> None:
        level = logging.DEBUG if self._warned else logging.WARNING
        logger.log(level, "swap tier full (or none): request %s is preempted by recompute; "
                   "raise swap_space_gib to swap more", request.req_id)
        self._warned = True


class AutoPreemption(SwapPreemption):
    """Swap when copying the blocks out and back costs less than recomputing their tokens.

    The copy bandwidth is measured once at start-up (``Swapper.measure_bandwidth``: a round
    trip of a few blocks). The prefill speed is measured as the engine runs: a moving average
    of the tokens per second of steps that computed at least ``min_tokens`` tokens; until one
    has, swapping is assumed cheaper (a block copy moves bytes; recomputing it runs the model).
    """

    def __init__(self, copy_bytes_per_s: float, block_bytes: int, block_size: int,
                 min_tokens: int = 32) -> None:
        super().__init__()
        self.copy_bytes_per_s = copy_bytes_per_s
        self.block_bytes = block_bytes
        self.block_size = block_size
        self.min_tokens = min_tokens
        self.prefill_tokens_per_s: float | None = None

    def observe_step(self, num_tokens, seconds):
        if num_tokens < self.min_tokens or seconds <= 0:
            return
        rate = num_tokens / seconds
        old = self.prefill_tokens_per_s
        self.prefill_tokens_per_s = rate if old is None else 0.8 * old + 0.2 * rate

    def should_swap(self, request, kv_cache):
        if not super().should_swap(request, kv_cache):
            return False
        if self.prefill_tokens_per_s is None:
            return True
        num_blocks = -(-request.num_computed_tokens // self.block_size)
        swap_s = 2 * num_blocks * self.block_bytes / self.copy_bytes_per_s
        recompute_s = request.num_computed_tokens / self.prefill_tokens_per_s
        return swap_s < recompute_s


def make_preemption_policy(mode: str, *, copy_bytes_per_s: float | None = None,
                           block_bytes: int = 0, block_size: int = 16) -> PreemptionPolicy:
    """The policy for ``preemption_mode``; ``auto`` without a tier (no measured bandwidth)
    recomputes."""
    if mode not in PREEMPTION_MODES:
        raise ValueError(f"preemption_mode must be one of {PREEMPTION_MODES}, got {mode!r}")
    if mode == "recompute" or (mode == "auto" and not copy_bytes_per_s):
        return RecomputePreemption()
    if mode == "swap":
        return SwapPreemption()
    return AutoPreemption(copy_bytes_per_s, block_bytes, block_size)
