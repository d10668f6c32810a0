"""Conformance suite for KV cache managers; a cache manager plugin subclasses it.

The tests drive the registered :class:`~octavo.kv_cache.manager.KVCacheManager` the way the
scheduler does (``allocate_slots``, then ``num_computed_tokens`` advanced and
``cache_computed_blocks`` after the step, ``free`` at the end) and check its accounting: block
tables cover the tokens, live requests never share a block they may write, a failed allocation
changes nothing, prefix hits reuse the same blocks without taking new ones, forks share blocks
and copy-on-write hands out a copy before a shared block is written, and the free count
returns to where it started once every request is freed. Usage::

    from octavo.testing.kv_cache_suite import KVCacheManagerSuite

    class TestMyManager(KVCacheManagerSuite):
        registered_name = "my-manager"
        supports_prefix_caching = True   # False: prefix tests check that nothing is reused
"""

from __future__ import annotations

import random
from typing import ClassVar

import pytest

from octavo.kv_cache.manager import CachedPrefix, KVCacheManager
from octavo.request import Request
from octavo.sampling_params import SamplingParams
from octavo.testing.suite import ConformanceSuite

__all__ = ["KVCacheManagerSuite", "make_request"]


def make_request(req_id: str, tokens: list[int]) -> Request:
    return Request(req_id, list(tokens), SamplingParams(max_tokens=64, ignore_eos=True))


class KVCacheManagerSuite(ConformanceSuite):
    """Conformance tests for a KV cache manager, built as the engine builds it:
    ``cls(num_blocks, block_size, enable_prefix_caching=...)``.

    Attributes:
        registered_name: the manager's registered name (required).
        num_blocks, block_size: the pool of most tests.
        supports_prefix_caching: the manager reuses cached prefixes when
            ``enable_prefix_caching`` is on (False: it must never report a prefix).
        supports_fork: the manager implements ``fork`` (``n > 1`` sampling).
    """

    registry_hook = "register_kv_cache_managers"
    num_blocks: ClassVar[int] = 16
    block_size: ClassVar[int] = 4
    supports_prefix_caching: ClassVar[bool] = True
    supports_fork: ClassVar[bool] = True

    def make_manager(self, num_blocks: int | None = None,
                     enable_prefix_caching: bool = True) -> KVCacheManager:
        """The manager under test (override to pass extra constructor arguments)."""
        return self.implementation()(num_blocks or self.num_blocks, self.block_size,
                                     enable_prefix_caching=enable_prefix_caching)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- the scheduler's moves ----------------------------------------------------------------
    def compute(self, kv: KVCacheManager, request: Request, num_tokens: int,
                prefix: CachedPrefix | None = None) -> bool:
        """Allocate ``num_tokens`` more slots (after ``prefix``, if given), then mark them
        computed and cache the full blocks, as a step does; False if out of blocks."""
        if prefix is not None and prefix.num_tokens:
            request.num_computed_tokens = prefix.num_tokens
        if not kv.allocate_slots(request, num_tokens, prefix):
            if prefix is not None:
                request.num_computed_tokens = 0
            return False
        kv.take_block_copies()
        request.num_computed_tokens += num_tokens
        kv.cache_computed_blocks(request)
        return True

    def check_tables(self, kv: KVCacheManager, live: list[Request]) -> None:
        """Each table covers its computed tokens with valid ids, and no block is written by
        two requests (the last block of each is the one being written)."""
        last_blocks = []
        for request in live:
            ids = kv.block_ids(request)
            assert len(ids) >= self.blocks_for(request.num_computed_tokens), request.req_id
            assert all(0 <= b < kv.num_blocks for b in ids), ids
            assert len(set(ids)) == len(ids), f"{request.req_id} holds a block twice: {ids}"
            if request.num_computed_tokens % self.block_size:
                last_blocks.append(ids[self.blocks_for(request.num_computed_tokens) - 1])
        assert len(last_blocks) == len(set(last_blocks)), "two requests write into one block"
        assert 0 <= kv.num_free_blocks <= kv.num_blocks
        assert 0.0 <= kv.usage() <= 1.0

    # -- tests --------------------------------------------------------------------------------
    def test_is_a_kv_cache_manager(self) -> None:
        kv = self.make_manager()
        assert isinstance(kv, KVCacheManager)
        assert (kv.num_blocks, kv.block_size) == (self.num_blocks, self.block_size)
        assert kv.num_free_blocks == kv.num_blocks and kv.usage() == 0.0

    def test_allocate_grows_the_table_and_free_returns_every_block(self) -> None:
        kv = self.make_manager(enable_prefix_caching=False)
        request = make_request("a", list(range(1, 10)))
        assert kv.block_ids(request) == []
        assert self.compute(kv, request, 9)
        assert len(kv.block_ids(request)) == self.blocks_for(9)
        assert kv.num_free_blocks == kv.num_blocks - self.blocks_for(9)
        for token in (50, 51, 52, 53):  # decode: a new block only when the last is full
            request.append_token(token)
            assert self.compute(kv, request, 1)
            assert len(kv.block_ids(request)) == self.blocks_for(request.num_tokens)
        assert kv.usage() > 0
        kv.free(request)
        assert kv.block_ids(request) == []
        assert kv.num_free_blocks == kv.num_blocks and kv.usage() == 0.0

    def test_out_of_blocks_fails_without_changing_anything(self) -> None:
        kv = self.make_manager(num_blocks=4, enable_prefix_caching=False)
        a, b = make_request("a", list(range(1, 12))), make_request("b", list(range(20, 30)))
        assert self.compute(kv, a, 11)  # 3 blocks
        before = (kv.num_free_blocks, kv.block_ids(a), kv.block_ids(b))
        assert not kv.allocate_slots(b, 10)
        assert (kv.num_free_blocks, kv.block_ids(a), kv.block_ids(b)) == before
        assert kv.allocate_slots(b, 4)  # what is left still fits
        for request in (a, b):
            kv.free(request)
        assert kv.num_free_blocks == kv.num_blocks

    def test_live_requests_hold_distinct_blocks(self) -> None:
        kv = self.make_manager(enable_prefix_caching=False)
        live = [make_request(f"r{i}", list(range(100 * i, 100 * i + 5 + i))) for i in range(4)]
        for request in live:
            assert self.compute(kv, request, request.num_tokens)
        ids = [b for request in live for b in kv.block_ids(request)]
        assert len(ids) == len(set(ids)), f"blocks shared without prefix caching: {ids}"
        self.check_tables(kv, live)
        for request in live:
            kv.free(request)
        assert kv.num_free_blocks == kv.num_blocks

    def test_prefix_hit_reuses_the_blocks(self) -> None:
        kv = self.make_manager()
        prompt = list(range(1, 3 * self.block_size + 3))
        a = make_request("a", prompt)
        assert self.compute(kv, a, a.num_tokens)
        b = make_request("b", prompt)
        prefix = kv.find_cached_prefix(b)
        if not self.supports_prefix_caching:
            assert prefix.num_tokens == 0
            return
        assert prefix.num_tokens == 3 * self.block_size, "the full blocks are a prefix hit"
        free = kv.num_free_blocks
        assert self.compute(kv, b, b.num_tokens - prefix.num_tokens, prefix)
        assert kv.block_ids(b)[:3] == kv.block_ids(a)[:3]
        assert kv.num_free_blocks == free - 1, "a hit takes only the blocks it adds"
        self.check_tables(kv, [a, b])
        for request in (a, b):
            kv.free(request)
        assert kv.num_free_blocks == kv.num_blocks

    def test_prefix_hit_after_the_owner_finished(self) -> None:
        if not self.supports_prefix_caching:
            pytest.skip("the manager declares no prefix caching")
        kv = self.make_manager()
        prompt = list(range(1, 2 * self.block_size + 2))
        a = make_request("a", prompt)
        assert self.compute(kv, a, a.num_tokens)
        kept = kv.block_ids(a)[:2]
        kv.free(a)
        assert kv.num_free_blocks == kv.num_blocks, "cached blocks of a freed request are free"
        b = make_request("b", prompt + [99])
        prefix = kv.find_cached_prefix(b)
        assert prefix.num_tokens == 2 * self.block_size
        assert self.compute(kv, b, b.num_tokens - prefix.num_tokens, prefix)
        assert kv.block_ids(b)[:2] == kept
        kv.free(b)
        assert kv.num_free_blocks == kv.num_blocks

    def test_no_prefix_hit_with_caching_off_or_after_reset(self) -> None:
        prompt = list(range(1, 2 * self.block_size + 2))
        off = self.make_manager(enable_prefix_caching=False)
        assert self.compute(off, make_request("a", prompt), len(prompt))
        assert off.find_cached_prefix(make_request("b", prompt)).num_tokens == 0
        kv = self.make_manager()
        a = make_request("a", prompt)
        assert self.compute(kv, a, len(prompt))
        kv.free(a)
        kv.reset_prefix_cache()
        assert kv.find_cached_prefix(make_request("b", prompt)).num_tokens == 0
        assert kv.num_free_blocks == kv.num_blocks

    def test_a_whole_block_prompt_leaves_one_token_to_compute(self) -> None:
        kv = self.make_manager()
        prompt = list(range(1, 2 * self.block_size + 1))
        assert self.compute(kv, make_request("a", prompt), len(prompt))
        prefix = kv.find_cached_prefix(make_request("b", prompt))
        assert prefix.num_tokens < len(prompt), "the last token's logits must be computed"

    def test_fork_shares_blocks_and_copies_on_write(self) -> None:
        if not self.supports_fork:
            pytest.skip("the manager declares no fork support")
        kv = self.make_manager(enable_prefix_caching=False)
        parent = make_request("p", list(range(1, self.block_size + 3)))  # 1 full + 2 tokens
        assert self.compute(kv, parent, parent.num_tokens)
        child = make_request("c", parent.prompt_token_ids)
        free = kv.num_free_blocks
        kv.fork(parent, child, parent.num_prompt_tokens)
        assert kv.block_ids(child) == kv.block_ids(parent)
        assert kv.num_free_blocks == free, "a fork takes no new blocks"
        # The child recomputes the last prompt token into the shared, partly filled block.
        child.num_computed_tokens = parent.num_prompt_tokens - 1
        assert kv.allocate_slots(child, 1)
        copies = kv.take_block_copies()
        shared = kv.block_ids(parent)[-1]
        assert len(copies) == 1 and copies[0][0] == shared, copies
        assert kv.block_ids(child)[-1] == copies[0][1] != shared
        assert kv.block_ids(child)[0] == kv.block_ids(parent)[0], "the full block stays shared"
        assert kv.take_block_copies() == [], "copies are handed out once"
        assert kv.num_free_blocks == free - 1
        for request in (parent, child):
            kv.free(request)
        assert kv.num_free_blocks == kv.num_blocks

    def test_random_workload_returns_every_block(self) -> None:
        """Requests with shared prefixes arrive, grow, fork and finish at random."""
        rng = random.Random(0)
        kv = self.make_manager(num_blocks=32)
        stems = [list(range(1000 * s, 1000 * s + 3 * self.block_size)) for s in range(3)]
        live: list[Request] = []
        for step in range(300):
            if rng.random() < 0.3:
                stem = rng.choice(stems)
                request = make_request(f"r{step}", stem[:rng.randint(1, len(stem))]
                                       + [rng.randint(5000, 6000) for _ in range(rng.randint(0, 5))])
                prefix = kv.find_cached_prefix(request)
                if self.compute(kv, request, request.num_tokens - prefix.num_tokens, prefix):
                    live.append(request)
            for request in list(live):
                request.append_token(rng.randint(1, 50))
                if not self.compute(kv, request, 1) or rng.random() < 0.1:
                    live.remove(request)
                    kv.free(request)
            self.check_tables(kv, live)  # (a fork below shares a block until it is written)
            if self.supports_fork and live and rng.random() < 0.1:
                parent = rng.choice(live)
                child = make_request(f"c{step}", parent.all_token_ids)
                kv.fork(parent, child, parent.num_computed_tokens)
                child.num_computed_tokens = parent.num_computed_tokens
                live.append(child)
        for request in live:
            kv.free(request)
        assert kv.num_free_blocks == kv.num_blocks, "blocks leaked"
        assert kv.usage() == 0.0
