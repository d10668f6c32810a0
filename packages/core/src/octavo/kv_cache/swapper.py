"""Swappers move whole KV blocks between the device pool and a slower tier, and back."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from octavo.modeling import KVCaches


class Swapper(ABC):
    """A second tier of KV blocks with its own block ids."""

    def __init__(self, kv_caches: KVCaches, num_blocks: int) -> None:
        self.kv_caches = kv_caches
        self.num_blocks = num_blocks

    @property
    @abstractmethod
    def num_free_blocks(self) -> int: ...

    @abstractmethod
    def swap_out(self, device_block_ids: list[int]) -> list[int]:
        """Copy device blocks to the tier; return the tier's block ids (in the same order)."""

    @abstractmethod
    def swap_in(self, tier_block_ids: list[int], device_block_ids: list[int]) -> None:
        """Copy tier blocks back into the given device blocks and free them on the tier."""

    @abstractmethod
    def free(self, tier_block_ids: list[int]) -> None: ...


class HostSwapper(Swapper):
    """Host memory (pinned when the device is CUDA) laid out like the device cache."""

    def __init__(self, kv_caches: KVCaches, num_blocks: int) -> None:
        super().__init__(kv_caches, num_blocks)
        pin = bool(kv_caches) and kv_caches[0][0].is_cuda
        self.host_caches = [
            tuple(torch.empty((num_blocks, *cache.shape[1:]), dtype=cache.dtype, device="cpu",
                              pin_memory=pin) for cache in layer)
            for layer in kv_caches
        ]
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def swap_out(self, device_block_ids):
        if len(device_block_ids) > len(self._free):
            raise RuntimeError(f"swap space full: {len(device_block_ids)} blocks asked, "
                               f"{len(self._free)} free")
        host_ids = [self._free.pop() for _ in device_block_ids]
        src = torch.tensor(device_block_ids, dtype=torch.long, device=self._device)
        dst = torch.tensor(host_ids, dtype=torch.long)
        for device_layer, host_layer in zip(self.kv_caches, self.host_caches):
            for device_cache, host_cache in zip(device_layer, host_layer):
                host_cache[dst] = device_cache[src].cpu()
        return host_ids

    def swap_in(self, tier_block_ids, device_block_ids):
        if len(tier_block_ids) != len(device_block_ids):
            raise ValueError("swap_in needs as many device blocks as host blocks")
        src = torch.tensor(tier_block_ids, dtype=torch.long)
        dst = torch.tensor(device_block_ids, dtype=torch.long, device=self._device)
        for device_layer, host_layer in zip(self.kv_caches, self.host_caches):
            for device_cache, host_cache in zip(device_layer, host_layer):
                device_cache[dst] = host_cache[src].to(device_cache.device, non_blocking=True)
        self.free(tier_block_ids)

    def free(self, tier_block_ids):
        self._free.extend(tier_block_ids)

    @property
    def _device(self) -> torch.device:
        return self.kv_caches[0][0].device if self.kv_caches else torch.device("cpu")
