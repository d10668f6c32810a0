"""KV cache managers: which blocks each request owns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from octavo.kv_cache.block_pool import Block, BlockHash, BlockPool, hash_block
from octavo.request import Request


@dataclass(frozen=True)
class CachedPrefix:
    """Blocks a new request can reuse, and the number of its tokens they hold."""

    blocks: tuple[Block, ...] = ()
    num_tokens: int = 0


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


class PagedKVCacheManager(KVCacheManager):
    """Paged blocks with automatic prefix caching (chained block hashes) and copy-on-write."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        super().__init__(num_blocks, block_size, enable_prefix_caching)
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self._blocks: dict[str, list[Block]] = {}
        self._hashes: dict[str, list[BlockHash]] = {}
        self._copies: list[tuple[int, int]] = []

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

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
        blocks = []
        for block_hash in self._full_block_hashes(request):
            block = self.pool.lookup(block_hash)
            if block is None:
                break
            blocks.append(block)
        # Always leave at least one token to compute: its logits start the generation.
        max_blocks = (request.num_tokens - 1) // self.block_size
        blocks = blocks[:max_blocks]
        return CachedPrefix(tuple(blocks), len(blocks) * self.block_size)

    def allocate_slots(self, request, num_new_tokens, prefix=None):
        prefix_blocks = prefix.blocks if prefix else ()
        num_computed = prefix.num_tokens if prefix else request.num_computed_tokens
        owned = self._blocks.get(request.req_id, [])
        num_grow = max(-(-(num_computed + num_new_tokens) // self.block_size)
                       - len(owned) - len(prefix_blocks), 0)
        shared = self._shared_in_write_range(owned, num_computed)
        # Reusing a free cached block takes it off the free queue too.
        num_revived = sum(1 for block in prefix_blocks if block.ref_cnt == 0)
        if num_grow + len(shared) + num_revived > self.pool.num_free_blocks:
            return False
        owned = self._blocks.setdefault(request.req_id, owned)
        self._reuse_prefix(owned, prefix_blocks)
        self._copy_on_write(owned, shared)
        owned.extend(self.pool.allocate(num_grow))
        return True

    def _shared_in_write_range(self, owned: list[Block], num_computed: int) -> list[int]:
        """Positions in ``owned`` of blocks the next tokens write into that another request
        also references: they must be copied first."""
        first_written = num_computed // self.block_size
        return [i for i in range(first_written, len(owned)) if owned[i].ref_cnt > 1]

    def _reuse_prefix(self, owned: list[Block], prefix_blocks: tuple[Block, ...]) -> None:
        """Take a reference to cached prefix blocks and make them the request's first blocks."""
        self.pool.touch(prefix_blocks)
        owned.extend(prefix_blocks)

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

    def take_block_copies(self):
        copies, self._copies = self._copies, []
        return copies

    def reset_prefix_cache(self):
        self.pool.reset_prefix_cache()
