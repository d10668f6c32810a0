"""A second tier of KV blocks: a ``BlockPool`` for the accounting (reference counts, an index
of full blocks by chained hash, LRU eviction of unreferenced cached blocks) over a
``Swapper`` that stores the blocks and copies them to and from the device pool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from octavo.kv_cache.block_pool import Block, BlockHash, BlockPool
from octavo.kv_cache.swapper import Swapper


@dataclass(frozen=True)
class SwapStats:
    """Counters of a KV cache's swap tier since start-up (all zero without one)."""

    num_tier_blocks: int = 0
    num_free_tier_blocks: int = 0
    blocks_swapped_out: int = 0  # device -> tier copies (preemption and prefix offload)
    blocks_swapped_in: int = 0  # tier -> device copies
    bytes_swapped_out: int = 0
    bytes_swapped_in: int = 0
    prefix_blocks_offloaded: int = 0  # cached prefix blocks copied out when evicted
    tier_prefix_hits: int = 0  # prefix blocks of new requests served from the tier


class KVTier:
    """Tier blocks held by swapped-out requests (referenced) and cached prefix blocks (free,
    indexed by hash, evicted least recently used first)."""

    def __init__(self, swapper: Swapper) -> None:
        self.swapper = swapper
        self.pool = BlockPool(swapper.num_blocks, enable_caching=True)
        self.block_bytes = swapper.block_bytes
        self.blocks_out = self.blocks_in = 0
        self.prefix_offloaded = 0

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def lookup(self, block_hash: BlockHash) -> Block | None:
        return self.pool.lookup(block_hash)

    def store(self, device_blocks: Sequence[tuple[int, BlockHash | None]]) -> list[Block] | None:
        """Hold these device blocks' contents in the tier, one reference each; a block whose
        hash the tier already has is shared, not copied. None (and no change) if full."""
        hits = [self.pool.lookup(h) if h is not None else None for _, h in device_blocks]
        num_new = sum(hit is None for hit in hits)
        num_revived = sum(1 for hit in set(filter(None, hits)) if hit.ref_cnt == 0)
        if num_new + num_revived > self.pool.num_free_blocks:
            return None
        self.pool.touch([hit for hit in hits if hit is not None])
        fresh = iter(self.pool.allocate(num_new))
        tier_blocks, copies = [], []
        for (device_id, block_hash), hit in zip(device_blocks, hits):
            block = hit or next(fresh)
            if hit is None:
                copies.append((device_id, block.block_id))
                if block_hash is not None:
                    self.pool.cache(block, block_hash)
            tier_blocks.append(block)
        self._copy_out(copies)
        return tier_blocks

    def offload(self, evicted: Sequence[tuple[int, BlockHash]]) -> None:
        """Copy cached prefix blocks that the device pool is evicting into the tier (as many as
        fit; the tier's least recently used cached blocks make room)."""
        known = [self.pool.lookup(h) for _, h in evicted]
        self.pool.touch([b for b in known if b is not None])  # most recently used now
        self.pool.release([b for b in known if b is not None])
        new = [(d, h) for (d, h), b in zip(evicted, known) if b is None]
        new = new[:self.pool.num_free_blocks]
        stored = self.store(new) or []
        self.pool.release(stored)
        self.prefix_offloaded += len(stored)

    def load(self, tier_blocks: Sequence[Block], device_block_ids: list[int]) -> None:
        """Copy tier blocks into device blocks (the tier keeps its copy and references)."""
        self.swapper.copy_in([b.block_id for b in tier_blocks], device_block_ids)
        self.blocks_in += len(device_block_ids)

    def pin(self, blocks: Sequence[Block]) -> None:
        self.pool.touch(blocks)

    def release(self, blocks: Sequence[Block]) -> None:
        """Drop references; a cached block stays in the tier for prefix hits until evicted."""
        self.pool.release(blocks)

    def reset_prefix_cache(self) -> None:
        self.pool.reset_prefix_cache()

    def stats(self, tier_prefix_hits: int) -> SwapStats:
        return SwapStats(
            num_tier_blocks=self.pool.num_blocks, num_free_tier_blocks=self.num_free_blocks,
            blocks_swapped_out=self.blocks_out, blocks_swapped_in=self.blocks_in,
            bytes_swapped_out=self.blocks_out * self.block_bytes,
            bytes_swapped_in=self.blocks_in * self.block_bytes,
            prefix_blocks_offloaded=self.prefix_offloaded, tier_prefix_hits=tier_prefix_hits)

    def _copy_out(self, copies: list[tuple[int, int]]) -> None:
        self.swapper.copy_out([d for d, _ in copies], [t for _, t in copies])
        self.blocks_out += len(copies)
