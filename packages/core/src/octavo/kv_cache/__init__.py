"""The paged KV cache: block pool, managers and swappers."""

from octavo.kv_cache.block_pool import Block, BlockPool, hash_block
from octavo.kv_cache.manager import CachedPrefix, KVCacheManager, PagedKVCacheManager
from octavo.kv_cache.swapper import HostSwapper, Swapper

__all__ = ["Block", "BlockPool", "CachedPrefix", "HostSwapper", "KVCacheManager",
           "PagedKVCacheManager", "Swapper", "hash_block"]
