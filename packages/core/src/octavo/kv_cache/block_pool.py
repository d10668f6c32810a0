"""Fixed-size KV blocks: reference counts, a free queue in eviction order, prefix-cache index."""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

BlockHash = bytes


def hash_block(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Chained hash of a full block: identifies the block's tokens and everything before them."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(parent or b"")
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


@dataclass(eq=False)
class Block:
    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None  # set once the block is full and cached


class BlockPool:
    """Owns every block. Free blocks wait in LRU order; cached free blocks stay reusable
    until they are evicted by an allocation."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[BlockHash, Block] = {}
        # Called with ``(block_id, hash)`` of cached blocks an allocation is about to reuse,
        # while they still hold their contents (a swap tier keeps them).
        self.on_evict: Callable[[list[tuple[int, BlockHash]]], None] | None = None

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def usage(self) -> float:
        """Fraction of blocks referenced by at least one request."""
        return 1.0 - len(self._free) / self.num_blocks

    def allocate(self, n: int) -> list[Block]:
        """Take ``n`` blocks from the head of the free queue, evicting their cached contents."""
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} blocks, {len(self._free)} free")
        taken, evicted = [], []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None and self._cached.get(block.block_hash) is block:
                evicted.append((block.block_id, block.block_hash))
            self._uncache(block)
            block.ref_cnt = 1
            taken.append(block)
        if evicted and self.on_evict is not None:
            self.on_evict(evicted)
        return taken

    def touch(self, blocks: Sequence[Block]) -> None:
        """Add a reference to each block (a prefix-cache hit or a fork)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def release(self, blocks: Sequence[Block]) -> None:
        """Drop a reference; unreferenced blocks join the tail of the free queue (evicted last)."""
        for block in blocks:
            assert block.ref_cnt > 0, f"block {block.block_id} freed twice"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block

    def lookup(self, block_hash: BlockHash) -> Block | None:
        return self._cached.get(block_hash) if self.enable_caching else None

    def cache(self, block: Block, block_hash: BlockHash) -> None:
        """Index a full block by its hash so later requests with the same prefix reuse it."""
        if not self.enable_caching or block.block_hash is not None:
            return
        if block_hash in self._cached:  # another block already holds these tokens
            return
        block.block_hash = block_hash
        self._cached[block_hash] = block

    def _uncache(self, block: Block) -> None:
        if block.block_hash is not None:
            if self._cached.get(block.block_hash) is block:
                del self._cached[block.block_hash]
            block.block_hash = None

    def reset_prefix_cache(self) -> None:
        for block in list(self._cached.values()):
            self._uncache(block)
