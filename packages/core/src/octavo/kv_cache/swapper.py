"""Swappers: storage for a second tier of KV blocks, and the copies between it and the device
pool. Which tier block holds what (reference counts, the prefix index, LRU) is the
``KVTier``'s business (``octavo/kv_cache/tier.py``); a swapper only stores and copies."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from abc import ABC, abstractmethod

import torch

from octavo.modeling import KVCaches

logger = logging.getLogger(__name__)


class TierUnavailable(RuntimeError):
    """A tier could not be set up (no room, a directory that cannot be written, ...)."""


class Swapper(ABC):
    """A second tier of ``num_blocks`` KV blocks laid out like the device cache; registered
    under ``register_swappers``.

    Args:
        kv_caches: the device cache, per layer ``(key_cache, value_cache)``.
        num_blocks: blocks in the tier.
        directory: where a file-backed tier keeps its file (ignored by memory tiers).
    """

    def __init__(self, kv_caches: KVCaches, num_blocks: int, directory: str | None = None):
        if num_blocks <= 0:
            raise ValueError(f"a swap tier needs at least one block, got {num_blocks}")
        self.kv_caches = kv_caches
        self.num_blocks = num_blocks

    @property
    def block_bytes(self) -> int:
        """Bytes one block holds over every layer, keys and values."""
        return sum(cache[0].numel() * cache.element_size() for layer in self.kv_caches
                   for cache in layer)

    @abstractmethod
    def copy_out(self, device_block_ids: list[int], tier_block_ids: list[int]) -> None:
        """Copy device blocks into the given tier blocks (in the same order)."""

    @abstractmethod
    def copy_in(self, tier_block_ids: list[int], device_block_ids: list[int]) -> None:
        """Copy tier blocks into the given device blocks (in the same order)."""

    def copy_device(self, copies: list[tuple[int, int]]) -> None:
        """Device-to-device block copies ``(src, dst)`` (pending copy-on-write copies, run
        before a swap so the swap sees and leaves the blocks as the step would)."""
        if not copies:
            return
        device = self.kv_caches[0][0].device
        src = torch.tensor([s for s, _ in copies], dtype=torch.long, device=device)
        dst = torch.tensor([d for _, d in copies], dtype=torch.long, device=device)
        for layer in self.kv_caches:
            for cache in layer:
                cache[dst] = cache[src]

    def measure_bandwidth(self, num_blocks: int = 8) -> float:
        """Bytes per second of a round trip (out, then in) of a few blocks, measured now."""
        n = min(num_blocks, self.num_blocks, self.kv_caches[0][0].shape[0])
        ids = list(range(n))
        self.copy_out(ids, ids)  # warm up (page faults of a fresh tier)
        start = time.perf_counter()
        self.copy_out(ids, ids)
        self.copy_in(ids, ids)
        if self.kv_caches[0][0].is_cuda:
            torch.cuda.synchronize()
        return 2 * n * self.block_bytes / max(time.perf_counter() - start, 1e-9)


class TensorSwapper(Swapper):
    """A tier held in tensors shaped like the device cache (``tier_caches``, per layer)."""

    tier_caches: list[tuple[torch.Tensor, torch.Tensor]]

    def copy_out(self, device_block_ids, tier_block_ids):
        if len(device_block_ids) != len(tier_block_ids):
            raise ValueError("copy_out needs as many tier blocks as device blocks")
        if not device_block_ids:
            return
        src = torch.tensor(device_block_ids, dtype=torch.long, device=self._device)
        dst = torch.tensor(tier_block_ids, dtype=torch.long)
        for device_layer, tier_layer in zip(self.kv_caches, self.tier_caches):
            for device_cache, tier_cache in zip(device_layer, tier_layer):
                tier_cache[dst] = device_cache[src].cpu()

    def copy_in(self, tier_block_ids, device_block_ids):
        if len(tier_block_ids) != len(device_block_ids):
            raise ValueError("copy_in needs as many device blocks as tier blocks")
        if not tier_block_ids:
            return
        src = torch.tensor(tier_block_ids, dtype=torch.long)
        dst = torch.tensor(device_block_ids, dtype=torch.long, device=self._device)
        for device_layer, tier_layer in zip(self.kv_caches, self.tier_caches):
            for device_cache, tier_cache in zip(device_layer, tier_layer):
                # Same stream as the step's kernels: the blocks are in place before they run.
                device_cache[dst] = tier_cache[src].to(device_cache.device, non_blocking=True)

    @property
    def _device(self) -> torch.device:
        return self.kv_caches[0][0].device


class HostSwapper(TensorSwapper):
    """Host memory (pinned when the device is CUDA)."""

    def __init__(self, kv_caches: KVCaches, num_blocks: int, directory: str | None = None):
        super().__init__(kv_caches, num_blocks)
        pin = kv_caches[0][0].is_cuda
        self.tier_caches = [
            tuple(torch.empty((num_blocks, *cache.shape[1:]), dtype=cache.dtype, device="cpu",
                              pin_memory=pin) for cache in layer)
            for layer in kv_caches
        ]


class DiskSwapper(TensorSwapper):
    """A memory-mapped file under ``directory`` (default: the system's temporary folder),
    allocated whole at start-up so a full disk shows then, not mid-run. The file is unlinked
    once mapped: nothing is left behind, and the kernel pages blocks to disk as RAM runs short.
    """

    def __init__(self, kv_caches: KVCaches, num_blocks: int, directory: str | None = None):
        super().__init__(kv_caches, num_blocks)
        directory = directory or tempfile.gettempdir()
        shape = (num_blocks, *kv_caches[0][0].shape[1:])
        per_cache = torch.Size(shape).numel()
        dtype = kv_caches[0][0].dtype
        total = per_cache * 2 * len(kv_caches)
        nbytes = total * torch.empty((), dtype=dtype).element_size()
        try:
            flat = _mapped_file(directory, total, dtype, nbytes)
        except OSError as exc:
            raise TierUnavailable(f"disk tier under {directory!r} ({nbytes / 2**30:.2f} GiB): "
                                  f"{exc.strerror or exc}") from exc
        views = flat.view(len(kv_caches), 2, *shape)
        self.tier_caches = [(views[i, 0], views[i, 1]) for i in range(len(kv_caches))]
        logger.info("disk KV tier: %d blocks, %.2f GiB under %s", num_blocks, nbytes / 2**30,
                    directory)


def _mapped_file(directory: str, numel: int, dtype: torch.dtype, nbytes: int) -> torch.Tensor:
    """A tensor memory-mapped onto a new file of ``nbytes`` under ``directory``, its blocks
    allocated on disk now; the file is unlinked before returning (or failing)."""
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="octavo-kv-", suffix=".bin", dir=directory)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        finally:
            os.close(fd)
        return torch.from_file(path, shared=True, size=numel, dtype=dtype)
    finally:
        os.unlink(path)
