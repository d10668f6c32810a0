"""KV cache managers: which blocks each request owns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from octavo.kv_cache.block_pool import Block, BlockHash, BlockPool, hash_block
from octavo.kv_cache.tier import KVTier, SwapStats
from octavo.request import Request


@dataclass(frozen=True)
class CachedPrefix:
    """Blocks a new request can reuse, and the number of its tokens they hold; where
    ``from_tier[i]`` is true, ``blocks[i]`` is a swap tier's block, loaded when allocated."""

    blocks: tuple[Block, ...] = ()
    num_tokens: int = 0
    from_tier: tuple[bool, ...] = ()

    def in_tier(self, i: int) -> bool:
        return bool(self.from_tier) and self.from_tier[i]

    @property
    def num_in_tier(self) -> int:
        return sum(self.from_tier)


class KVCacheManager(ABC):
    """Allocates, shares and frees a request's KV blocks; registered under
    ``register_kv_cache_managers``.

    Args:
        num_blocks: blocks in the device pool (``num_blocks`` and ``block_size`` are read by
            the scheduler and the engine's stats).
        block_size: tokens per block.
        enable_prefix_caching: reuse full blocks whose chained hash matches a new prompt.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching

    @property
    @abstractmethod
    def num_free_blocks(self) -> int: ...

    @abstractmethod
    def usage(self) -> float:
        """Fraction of blocks in use."""

    @abstractmethod
    def find_cached_prefix(self, request: Request) -> CachedPrefix:
        """The longest cached prefix of a request that has computed nothing yet."""

    @abstractmethod
    def allocate_slots(self, request: Request, num_new_tokens: int,
                       prefix: CachedPrefix | None = None) -> bool:
        """Make room for ``num_new_tokens`` more tokens; False (and no change) if out of blocks."""

    @abstractmethod
    def cache_computed_blocks(self, request: Request) -> None:
        """Index the request's full, computed blocks for prefix reuse."""

    @abstractmethod
    def fork(self, parent: Request, child: Request, num_tokens: int) -> None:
        """Share the parent's blocks that hold its first ``num_tokens`` tokens with ``child``."""

    @abstractmethod
    def free(self, request: Request) -> None:
        """Release every block of the request."""

    @abstractmethod
    def block_ids(self, request: Request) -> list[int]: ...

    @abstractmethod
    def take_block_copies(self) -> list[tuple[int, int]]:
        """Copy-on-write copies ``(src, dst)`` decided since the last call; run before the step."""

    @abstractmethod
    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix block (their contents stay until they are reused)."""

    # -- swap tier (optional: a manager without one recomputes every preempted request) ---
    def attach_tier(self, tier: KVTier) -> None:
        """Use ``tier`` for swapped-out requests and evicted prefix blocks."""
        raise NotImplementedError(f"{type(self).__name__} cannot use a swap tier")

    def swap_out(self, request: Request) -> bool:
        """Move the request's computed blocks to the tier and free them on the device; False
        (and no change) without a tier or when it is full. A swapped request keeps its
        ``num_computed_tokens``; ``allocate_slots`` swaps it back in."""
        return False

    @property
    def num_swapped_requests(self) -> int:
        return 0

    def swap_stats(self) -> SwapStats:
        return SwapStats()


class PagedKVCacheManager(KVCacheManager):
    """Paged blocks with automatic prefix caching (chained block hashes) and copy-on-write."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        super().__init__(num_blocks, block_size, enable_prefix_caching)
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self._blocks: dict[str, list[Block]] = {}
        self._hashes: dict[str, list[BlockHash]] = {}
        self._copies: list[tuple[int, int]] = []
        self.tier: KVTier | None = None
        self._swapped: dict[str, list[Block]] = {}  # req_id -> its tier blocks
        self._tier_prefix_hits = 0

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_swapped_requests(self) -> int:
        return len(self._swapped)

    def usage(self) -> float:
        return self.pool.usage()

    def block_ids(self, request: Request) -> list[int]:
        return [block.block_id for block in self._blocks.get(request.req_id, ())]

    def _full_block_hashes(self, request: Request) -> list[BlockHash]:
        """Hashes of every full block of the request's known tokens (extended incrementally)."""
        hashes = self._hashes.setdefault(request.req_id, [])
        tokens = request.all_token_ids
        for i in range(len(hashes), len(tokens) // self.block_size):
            chunk = tokens[i * self.block_size:(i + 1) * self.block_size]
            hashes.append(hash_block(hashes[-1] if hashes else None, chunk))
        return hashes

    def find_cached_prefix(self, request: Request) -> CachedPrefix:
        if not self.enable_prefix_caching or request.req_id in self._blocks:
            return CachedPrefix()
        # Always leave at least one token to compute: its logits start the generation.
        max_blocks = (request.num_tokens - 1) // self.block_size
        blocks, from_tier = [], []
        for block_hash in self._full_block_hashes(request)[:max_blocks]:
            block = self.pool.lookup(block_hash)
            in_tier = block is None and self.tier is not None
            if in_tier:
                block = self.tier.lookup(block_hash)
            if block is None:
                break
            blocks.append(block)
            from_tier.append(in_tier)
        return CachedPrefix(tuple(blocks), len(blocks) * self.block_size,
                            tuple(from_tier) if any(from_tier) else ())

    def allocate_slots(self, request, num_new_tokens, prefix=None):
        if request.req_id in self._swapped:
            return self._swap_in(request, num_new_tokens)
        prefix = prefix or CachedPrefix()
        num_computed = prefix.num_tokens if prefix.blocks else request.num_computed_tokens
        owned = self._blocks.get(request.req_id, [])
        num_grow = max(-(-(num_computed + num_new_tokens) // self.block_size)
                       - len(owned) - len(prefix.blocks), 0)
        shared = self._shared_in_write_range(owned, num_computed)
        # Reusing a free cached block takes it off the free queue too; a tier block needs one.
        num_revived = sum(1 for i, block in enumerate(prefix.blocks)
                          if not prefix.in_tier(i) and block.ref_cnt == 0)
        if (num_grow + len(shared) + num_revived + prefix.num_in_tier
                > self.pool.num_free_blocks):
            return False
        owned = self._blocks.setdefault(request.req_id, owned)
        self._reuse_prefix(owned, prefix)
        self._copy_on_write(owned, shared)
        owned.extend(self.pool.allocate(num_grow))
        return True

    def _shared_in_write_range(self, owned: list[Block], num_computed: int) -> list[int]:
        """Positions in ``owned`` of blocks the next tokens write into that another request
        also references: they must be copied first."""
        first_written = num_computed // self.block_size
        return [i for i in range(first_written, len(owned)) if owned[i].ref_cnt > 1]

    def _reuse_prefix(self, owned: list[Block], prefix: CachedPrefix) -> None:
        """Take a reference to cached prefix blocks (loading those in the tier into fresh
        device blocks) and make them the request's first blocks."""
        self.pool.touch([b for i, b in enumerate(prefix.blocks) if not prefix.in_tier(i)])
        if not prefix.num_in_tier:
            owned.extend(prefix.blocks)
            return
        tier_blocks = [b for i, b in enumerate(prefix.blocks) if prefix.in_tier(i)]
        loaded = iter(self._load(tier_blocks))
        self._tier_prefix_hits += len(tier_blocks)
        owned.extend(next(loaded) if prefix.in_tier(i) else block
                     for i, block in enumerate(prefix.blocks))

    def _load(self, tier_blocks: list[Block]) -> list[Block]:
        """Fresh device blocks holding copies of ``tier_blocks`` (cached under their hashes)."""
        self._flush_copies()
        self.tier.pin(tier_blocks)  # the allocation below may offload into the tier
        fresh = self.pool.allocate(len(tier_blocks))
        self.tier.load(tier_blocks, [b.block_id for b in fresh])
        for tier_block, block in zip(tier_blocks, fresh):
            if tier_block.block_hash is not None:
                self.pool.cache(block, tier_block.block_hash)
        self.tier.release(tier_blocks)
        return fresh

    def _copy_on_write(self, owned: list[Block], shared: list[int]) -> None:
        """Give the request a private copy of each shared block it is about to write into."""
        for i in shared:
            (fresh,) = self.pool.allocate(1)
            self._copies.append((owned[i].block_id, fresh.block_id))
            self.pool.release([owned[i]])
            owned[i] = fresh

    def cache_computed_blocks(self, request):
        if not self.enable_prefix_caching:
            return
        owned = self._blocks.get(request.req_id, [])
        num_full = min(request.num_computed_tokens // self.block_size, len(owned))
        hashes = self._full_block_hashes(request)
        for block, block_hash in zip(owned[:num_full], hashes[:num_full]):
            self.pool.cache(block, block_hash)

    def fork(self, parent, child, num_tokens):
        if child.req_id in self._blocks:
            raise ValueError(f"request {child.req_id!r} already owns blocks")
        shared = self._blocks[parent.req_id][: -(-num_tokens // self.block_size)]
        self.pool.touch(shared)
        self._blocks[child.req_id] = list(shared)

    def free(self, request):
        blocks = self._blocks.pop(request.req_id, [])
        # Reverse order: a request's last blocks are evicted first, its prefix last.
        self.pool.release(list(reversed(blocks)))
        self._hashes.pop(request.req_id, None)
        tier_blocks = self._swapped.pop(request.req_id, None)
        if tier_blocks:
            self.tier.release(list(reversed(tier_blocks)))

    def take_block_copies(self):
        copies, self._copies = self._copies, []
        return copies

    def reset_prefix_cache(self):
        self.pool.reset_prefix_cache()
        if self.tier is not None:
            self.tier.reset_prefix_cache()

    # -- swap tier ----------------------------------------------------------------------------
    def attach_tier(self, tier):
        self.tier = tier
        if self.enable_prefix_caching:
            self.pool.on_evict = tier.offload

    def swap_stats(self):
        return self.tier.stats(self._tier_prefix_hits) if self.tier else SwapStats()

    def swap_out(self, request):
        owned = self._blocks.get(request.req_id)
        num_kept = -(-request.num_computed_tokens // self.block_size)
        if self.tier is None or not owned or num_kept == 0:
            return False
        self._flush_copies()
        hashes = self._full_block_hashes(request)
        num_full = request.num_computed_tokens // self.block_size
        tier_blocks = self.tier.store([(block.block_id, hashes[i] if i < num_full else None)
                                       for i, block in enumerate(owned[:num_kept])])
        if tier_blocks is None:
            return False
        self.free(request)
        self._swapped[request.req_id] = tier_blocks
        return True

    def _swap_in(self, request: Request, num_new_tokens: int) -> bool:
        """Bring a swapped request's blocks back (reusing device blocks that still hold the
        same hashed contents) and make room for ``num_new_tokens``; all or nothing."""
        tier_blocks = self._swapped[request.req_id]
        on_device = [self.pool.lookup(b.block_hash) if b.block_hash is not None else None
                     for b in tier_blocks]
        num_load = sum(block is None for block in on_device)
        num_revived = sum(1 for block in on_device if block is not None and block.ref_cnt == 0)
        num_grow = max(-(-(request.num_computed_tokens + num_new_tokens) // self.block_size)
                       - len(tier_blocks), 0)
        if num_load + num_revived + num_grow > self.pool.num_free_blocks:
            return False
        self.pool.touch([block for block in on_device if block is not None])
        loaded = iter(self._load([t for t, d in zip(tier_blocks, on_device) if d is None]))
        self._blocks[request.req_id] = [d or next(loaded) for d in on_device]
        self.tier.release(list(reversed(tier_blocks)))
        del self._swapped[request.req_id]
        resumed = self.allocate_slots(request, num_new_tokens)
        assert resumed, "a swapped-in request's growth was counted above"
        return True

    def _flush_copies(self) -> None:
        """Run pending copy-on-write copies now: a swap must see (and must not overwrite the
        sources of) the blocks as the step will."""
        if self._copies:
            self.tier.swapper.copy_device(self._copies)
            self._copies = []
