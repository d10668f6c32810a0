"""Block pool and paged KV cache manager: accounting, prefix caching, copy-on-write."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from octavo.kv_cache import BlockPool, PagedKVCacheManager, hash_block
from octavo.request import Request

BS = 4


def make_request(req_id: str, tokens: list[int]) -> Request:
    return Request(req_id, list(tokens), sampling_params=None)


def test_pool_allocate_release_counts():
    pool = BlockPool(8)
    blocks = pool.allocate(3)
    assert pool.num_free_blocks == 5
    assert pool.usage() == pytest.approx(3 / 8)
    pool.touch(blocks[:1])
    pool.release(blocks)
    assert pool.num_free_blocks == 7
    pool.release(blocks[:1])
    assert pool.num_free_blocks == 8
    with pytest.raises(RuntimeError):
        pool.allocate(9)


def test_pool_double_free_is_caught():
    pool = BlockPool(2)
    (block,) = pool.allocate(1)
    pool.release([block])
    with pytest.raises(AssertionError):
        pool.release([block])


def test_free_queue_evicts_least_recently_freed_first():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.cache(a, b"a")
    pool.release([c, a, b])
    assert [blk.block_id for blk in pool.allocate(1)] == [c.block_id]
    assert pool.lookup(b"a") is a  # a is still cached and reusable
    pool.allocate(1)  # takes a, evicting its cached contents
    assert pool.lookup(b"a") is None


def test_hash_chain_depends_on_prefix():
    assert hash_block(None, [1, 2]) == hash_block(None, [1, 2])
    assert hash_block(hash_block(None, [0]), [1, 2]) != hash_block(None, [1, 2])


def test_allocate_exact_blocks_and_free():
    kv = PagedKVCacheManager(10, BS)
    req = make_request("a", range(10))
    assert kv.allocate_slots(req, 10)
    assert len(kv.block_ids(req)) == 3
    req.num_computed_tokens = 10
    assert kv.allocate_slots(req, 2)  # fits in the third block
    assert len(kv.block_ids(req)) == 3
    assert kv.allocate_slots(req, 3)
    assert len(kv.block_ids(req)) == 4
    kv.free(req)
    assert kv.num_free_blocks == 10


def test_allocate_fails_without_change_when_out_of_blocks():
    kv = PagedKVCacheManager(2, BS)
    req = make_request("a", range(12))
    assert not kv.allocate_slots(req, 12)
    assert kv.num_free_blocks == 2 and kv.block_ids(req) == []


def test_prefix_cache_hit_shares_full_blocks():
    kv = PagedKVCacheManager(16, BS)
    a = make_request("a", list(range(10)))
    assert kv.allocate_slots(a, 10)
    a.num_computed_tokens = 10
    kv.cache_computed_blocks(a)
    b = make_request("b", list(range(9)) + [99, 98])
    prefix = kv.find_cached_prefix(b)
    assert prefix.num_tokens == 8
    assert kv.allocate_slots(b, b.num_tokens - 8, prefix)
    assert kv.block_ids(b)[:2] == kv.block_ids(a)[:2]
    assert kv.block_ids(b)[2] != kv.block_ids(a)[2]
    kv.free(a)
    kv.free(b)
    assert kv.num_free_blocks == 16


def test_reset_prefix_cache_forgets_freed_prefixes():
    kv = PagedKVCacheManager(16, BS)
    a = make_request("a", list(range(10)))
    assert _add_computed(kv, a)
    kv.free(a)
    assert kv.find_cached_prefix(make_request("b", list(range(10)))).num_tokens == 8
    kv.reset_prefix_cache()
    assert kv.find_cached_prefix(make_request("c", list(range(10)))).num_tokens == 0
    assert kv.num_free_blocks == 16


def test_full_hit_still_computes_the_last_token():
    kv = PagedKVCacheManager(16, BS)
    a = make_request("a", list(range(8)))
    assert kv.allocate_slots(a, 8)
    a.num_computed_tokens = 8
    kv.cache_computed_blocks(a)
    b = make_request("b", list(range(8)))
    assert kv.find_cached_prefix(b).num_tokens == 4


def test_prefix_caching_off_finds_nothing():
    kv = PagedKVCacheManager(16, BS, enable_prefix_caching=False)
    a = make_request("a", list(range(8)))
    kv.allocate_slots(a, 8)
    a.num_computed_tokens = 8
    kv.cache_computed_blocks(a)
    assert kv.find_cached_prefix(make_request("b", list(range(9)))).num_tokens == 0


def test_fork_then_copy_on_write_of_the_shared_partial_block():
    kv = PagedKVCacheManager(16, BS)
    parent = make_request("p", list(range(6)))
    assert kv.allocate_slots(parent, 6)
    parent.num_computed_tokens = 6
    child = make_request("c", list(range(6)))
    kv.fork(parent, child, 6)
    assert kv.block_ids(child) == kv.block_ids(parent)
    free_before = kv.num_free_blocks
    child.num_computed_tokens = 5  # recompute the last prompt token
    assert kv.allocate_slots(child, 1)
    (src, dst), = kv.take_block_copies()
    assert src == kv.block_ids(parent)[1] and dst == kv.block_ids(child)[1]
    assert kv.block_ids(child)[0] == kv.block_ids(parent)[0]  # the full block stays shared
    assert kv.num_free_blocks == free_before - 1
    # The parent now owns its partial block alone: no second copy.
    parent.output_token_ids.append(7)
    assert kv.allocate_slots(parent, 1)
    assert kv.take_block_copies() == []
    kv.free(parent)
    kv.free(child)
    assert kv.num_free_blocks == 16


def _add_computed(kv, req) -> bool:
    """Allocate a new request's prompt (reusing a cached prefix) as if it were computed."""
    prefix = kv.find_cached_prefix(req)
    if not kv.allocate_slots(req, req.num_tokens - prefix.num_tokens, prefix):
        return False
    req.num_computed_tokens = req.num_tokens
    kv.cache_computed_blocks(req)
    return True


def _grow_computed(kv, req, n: int) -> None:
    """Append and compute ``n`` output tokens if blocks allow; else leave the request as is."""
    req.output_token_ids.extend([1] * n)
    if kv.allocate_slots(req, n):
        req.num_computed_tokens += n
        kv.cache_computed_blocks(req)
    else:
        del req.output_token_ids[-n:]


def _assert_references_match(kv, live, num_blocks) -> None:
    """Every block is either free or referenced exactly as often as requests hold it."""
    held: dict[int, int] = {}
    for req in live.values():
        for block_id in kv.block_ids(req):
            held[block_id] = held.get(block_id, 0) + 1
    for block in kv.pool.blocks:
        assert block.ref_cnt == held.get(block.block_id, 0)
    assert kv.num_free_blocks == num_blocks - len(held)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_streams_never_leak_or_double_free(data):
    num_blocks = data.draw(st.integers(4, 24))
    kv = PagedKVCacheManager(num_blocks, BS, enable_prefix_caching=data.draw(st.booleans()))
    live: dict[str, Request] = {}
    for step in range(data.draw(st.integers(1, 40))):
        action = data.draw(st.sampled_from(["add", "grow", "fork", "free"]))
        if action == "add":
            tokens = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=20))
            req = make_request(f"r{step}", tokens)
            if _add_computed(kv, req):
                live[req.req_id] = req
        elif action == "grow" and live:
            req = live[data.draw(st.sampled_from(sorted(live)))]
            _grow_computed(kv, req, data.draw(st.integers(1, 6)))
        elif action == "fork" and live:
            parent = live[data.draw(st.sampled_from(sorted(live)))]
            child = make_request(f"f{step}", parent.all_token_ids)
            kv.fork(parent, child, parent.num_tokens)
            child.num_computed_tokens = parent.num_tokens
            live[child.req_id] = child
        elif action == "free" and live:
            kv.free(live.pop(data.draw(st.sampled_from(sorted(live)))))
        kv.take_block_copies()
        _assert_references_match(kv, live, num_blocks)
    for req in list(live.values()):
        kv.free(req)
    assert kv.num_free_blocks == num_blocks


def test_request_token_slices_span_prompt_and_output():
    req = make_request("a", [1, 2, 3])
    req.output_token_ids.extend([4, 5])
    for start in range(6):
        for stop in range(start, 6):
            assert req.token_ids(start, stop) == [1, 2, 3, 4, 5][start:stop]


def test_kv_cache_spec_share_of_a_tensor_parallel_rank():
    from octavo.modeling import KVCacheSpec, ParallelConfig

    spec = KVCacheSpec(num_layers=2, num_kv_heads=8, head_size=64)
    assert spec.for_rank(ParallelConfig(4)).num_kv_heads == 2
    assert spec.for_rank(ParallelConfig(16)).num_kv_heads == 1  # replicated
    assert spec.for_rank(ParallelConfig()).bytes_per_token(torch.float32) == 2 * 2 * 8 * 64 * 4
