"""Swap preemption and the prefix tier, at the scheduler: a fake runner writes a value into
each computed slot that stands for the tokens up to that position (what a model's K/V does),
and before every step checks that each scheduled request's blocks still hold the values of
every position it has computed, so a block lost, shared wrongly or swapped back into the wrong
place fails at once. Block accounting is checked in both tiers after every step."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from octavo.engine.model_runner import ModelRunner
from octavo.engine.outputs import RunnerOutput
from octavo.engine.preemption import (
    AutoPreemption,
    RecomputePreemption,
    SwapPreemption,
    make_preemption_policy,
)
from octavo.engine.scheduler import FCFSScheduler, PriorityScheduler
from octavo.kv_cache import HostSwapper, PagedKVCacheManager
from octavo.kv_cache.tier import KVTier
from octavo.request import Request, RequestStatus
from octavo.sampling_params import SamplingParams

BS = 4


def slot_value(tokens: list[int], pos: int) -> float:
    """What position ``pos`` holds after ``tokens[:pos + 1]``: exact in float64."""
    return float(hash(tuple(tokens[:pos + 1])) % (1 << 40))


class FakeRunner:
    """Checks the blocks of scheduled requests, then writes the step's positions."""

    def __init__(self, num_blocks: int):
        self.caches = [(torch.full((num_blocks, BS, 1, 1), -1.0, dtype=torch.float64),
                        torch.full((num_blocks, BS, 1, 1), -1.0, dtype=torch.float64))]
        self.runner = ModelRunner(None, self.caches, BS, torch.device("cpu"))

    def value(self, block_ids: list[int], pos: int) -> float:
        return self.caches[0][0][block_ids[pos // BS], pos % BS, 0, 0].item()

    def execute(self, out, rng: random.Random) -> RunnerOutput:
        self.runner.copy_blocks(out.block_copies)
        result = RunnerOutput()
        for item in out.scheduled:
            request, tokens = item.request, item.request.all_token_ids
            for pos in range(request.num_computed_tokens):
                assert self.value(item.block_ids, pos) == slot_value(tokens, pos), (
                    request.req_id, pos)
            for pos in range(request.num_computed_tokens,
                             request.num_computed_tokens + item.num_tokens):
                block = item.block_ids[pos // BS]
                for cache in self.caches[0]:
                    cache[block, pos % BS, 0, 0] = slot_value(tokens, pos)
            if item.samples:
                result.sampled_token_ids[request.req_id] = rng.randrange(6)
        return result


def make_setup(num_blocks, tier_blocks, mode="swap", cls=FCFSScheduler, caching=True, **opts):
    runner = FakeRunner(num_blocks)
    kv = PagedKVCacheManager(num_blocks, BS, enable_prefix_caching=caching)
    if tier_blocks:
        kv.attach_tier(KVTier(HostSwapper(runner.caches, tier_blocks)))
    policy = {"swap": SwapPreemption, "recompute": RecomputePreemption}[mode]()
    kwargs = dict(max_num_batched_tokens=16, max_num_seqs=8, max_model_len=64)
    kwargs.update(opts)
    return cls(kv, preemption=policy, **kwargs), runner


def make_request(req_id, tokens, max_tokens=4, **kwargs):
    return Request(req_id, list(tokens), SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                   **kwargs)


def check_accounting(sched) -> None:
    kv = sched.kv_cache
    held = sum(b.ref_cnt for b in kv.pool.blocks)
    owned = sum(len(blocks) for blocks in kv._blocks.values())
    assert held == owned  # every device reference is a request's block
    if kv.tier is not None:
        tier_held = sum(b.ref_cnt for b in kv.tier.pool.blocks)
        assert tier_held == sum(len(blocks) for blocks in kv._swapped.values())
        assert kv.tier.num_free_blocks == sum(b.ref_cnt == 0 for b in kv.tier.pool.blocks)
    counts = sched.request_counts()
    swapped = [r for r in sched.waiting if r.req_id in kv._swapped]
    assert counts.swapped == len(swapped) == kv.num_swapped_requests
    assert counts.running == len(sched.running)


def step(sched, runner, rng):
    out = sched.schedule()
    for item in out.scheduled:
        assert item.request.req_id not in sched.kv_cache._swapped  # blocks in place
    result = runner.execute(out, rng)
    outputs = sched.update(out, result)
    check_accounting(sched)
    return out, outputs


def drain(sched, runner, rng, limit=3000):
    for _ in range(limit):
        if not sched.has_unfinished_requests():
            return
        step(sched, runner, rng)
    raise AssertionError("requests never finished")


def assert_all_free(sched):
    kv = sched.kv_cache
    assert kv.num_free_blocks == kv.num_blocks
    assert all(b.ref_cnt == 0 for b in kv.pool.blocks)
    if kv.tier is not None:
        assert kv.tier.num_free_blocks == kv.tier.pool.num_blocks
        assert all(b.ref_cnt == 0 for b in kv.tier.pool.blocks)


def two_requests(sched, max_tokens: int) -> tuple[Request, Request]:
    """Two 7-token prompts (2 blocks each) over a 4-block pool: ``b`` is preempted."""
    a = make_request("a", range(7), max_tokens=max_tokens, arrival_time=1.0)
    b = make_request("b", range(10, 17), max_tokens=max_tokens, arrival_time=2.0)
    sched.add_request(a)
    sched.add_request(b)
    return a, b


def test_a_swapped_victim_keeps_its_progress_and_resumes_without_recompute():
    sched, runner = make_setup(4, 8, max_num_batched_tokens=64)
    a, b = two_requests(sched, 6)
    rng = random.Random(0)
    computed, swapped_seen = 0, False
    while sched.has_unfinished_requests():
        out, _ = step(sched, runner, rng)
        computed += out.num_tokens
        swapped_seen |= sched.request_counts().swapped == 1
    assert swapped_seen and b.num_preemptions >= 1
    assert sched.preemption_counts() == {"swap": b.num_preemptions}
    # Nothing was recomputed: each token position ran exactly once.
    assert computed == a.num_tokens - 1 + b.num_tokens - 1
    stats = sched.kv_cache.swap_stats()
    # Out: b's two blocks (and prefix blocks offloaded on eviction); in: what the device pool
    # no longer held (a full block still cached there is reused instead of copied).
    assert stats.blocks_swapped_out >= 2 and stats.blocks_swapped_in >= 1
    assert stats.bytes_swapped_in == stats.blocks_swapped_in * sched.kv_cache.tier.block_bytes
    assert_all_free(sched)


def test_a_full_tier_falls_back_to_recompute(caplog):
    sched, runner = make_setup(4, 1, max_num_batched_tokens=64)
    _, b = two_requests(sched, 6)
    with caplog.at_level("WARNING"):
        drain(sched, runner, random.Random(0))
    assert sched.preemption_counts().get("recompute", 0) >= 1
    assert "swap tier full" in caplog.text
    assert len(b.output_token_ids) == 6
    assert_all_free(sched)


def test_without_a_tier_swap_mode_recomputes():
    sched, runner = make_setup(4, 0, max_num_batched_tokens=64)
    two_requests(sched, 6)
    drain(sched, runner, random.Random(0))
    counts = sched.preemption_counts()
    assert "swap" not in counts and counts["recompute"] >= 1
    assert sched.request_counts().swapped == 0


def test_abort_while_swapped_frees_its_tier_blocks():
    sched, runner = make_setup(4, 8, max_num_batched_tokens=64)
    a, b = two_requests(sched, 20)
    rng = random.Random(0)
    for _ in range(50):
        step(sched, runner, rng)
        if sched.request_counts().swapped:
            break
    assert sched.kv_cache.num_swapped_requests == 1
    tier = sched.kv_cache.tier
    assert any(blk.ref_cnt for blk in tier.pool.blocks)  # the swapped request's blocks
    (victim,) = [r for r in (a, b) if r.req_id in sched.kv_cache._swapped]
    outs = sched.abort_requests([victim.req_id])
    assert [o.finish_reason for o in outs] == ["abort"]
    assert victim.status == RequestStatus.FINISHED_ABORTED
    assert sched.request_counts().swapped == 0
    assert all(blk.ref_cnt == 0 for blk in tier.pool.blocks)
    drain(sched, runner, rng)
    assert_all_free(sched)


def test_shared_blocks_are_stored_once_in_the_tier():
    """n > 1 siblings share the prompt's full blocks; swapping two of them holds one copy with
    two references (and nothing is copied twice)."""
    sched, runner = make_setup(16, 16, max_num_batched_tokens=64)
    parent = make_request("p", range(9), max_tokens=3)
    parent.fork_children = [make_request(f"k{i}", range(9), max_tokens=3) for i in range(2)]
    sched.add_request(parent)
    rng = random.Random(0)
    step(sched, runner, rng)  # the prompt, once
    step(sched, runner, rng)  # every sibling writes its own next token (copy-on-write)
    kv = sched.kv_cache
    for request in list(sched.running)[1:]:
        sched._preempt(request)
    check_accounting(sched)
    assert kv.num_swapped_requests == 2
    full_prompt_blocks = 9 // BS
    shared = [b for b in kv.tier.pool.blocks if b.ref_cnt == 2]
    assert len(shared) == full_prompt_blocks
    # 2 full prompt blocks once + each sibling's own partial block.
    assert kv.swap_stats().blocks_swapped_out == full_prompt_blocks + 2
    drain(sched, runner, rng)
    assert_all_free(sched)


def test_a_victim_with_a_pending_copy_on_write_is_swapped_with_the_copy():
    """A sibling that got its copy-on-write block this step and is then preempted: the copy
    has not run yet, so the swap must run it first or the tier stores an empty block."""
    sched, runner = make_setup(16, 16, max_num_batched_tokens=64)
    parent = make_request("p", range(10), max_tokens=3)
    parent.fork_children = [make_request("k0", range(10), max_tokens=3)]
    sched.add_request(parent)
    rng = random.Random(0)
    step(sched, runner, rng)  # the prompt; k0 forks and waits with 9 of 10 tokens computed
    (child,) = [r for r in sched.waiting]
    kv = sched.kv_cache
    assert kv.allocate_slots(child, 1)  # shares the partial block: copy-on-write pending
    assert kv._copies
    sched.waiting.remove(child)
    sched._start_running(child, child.num_computed_tokens)
    sched._preempt(child)
    assert kv.num_swapped_requests == 1
    drain(sched, runner, rng)  # the runner checks child's position 8 once it resumes
    assert_all_free(sched)


def test_an_evicted_prefix_comes_back_from_the_tier():
    sched, runner = make_setup(6, 16, max_num_batched_tokens=64)
    rng = random.Random(0)
    first = make_request("first", range(13), max_tokens=1)
    sched.add_request(first)
    drain(sched, runner, rng)
    for i in range(3):  # fill the pool with other prompts: first's blocks are evicted
        sched.add_request(make_request(f"other{i}", range(100 + 20 * i, 116 + 20 * i),
                                       max_tokens=1))
        drain(sched, runner, rng)
    assert sched.kv_cache.pool.lookup(sched.kv_cache.tier.pool.blocks[0].block_hash) is None \
        or sched.kv_cache.swap_stats().prefix_blocks_offloaded > 0
    again = make_request("again", list(range(13)) + [50, 51], max_tokens=2)
    sched.add_request(again)
    out, _ = step(sched, runner, rng)
    assert again.num_cached_tokens == 12  # 3 full blocks, from the tier
    assert sched.kv_cache.swap_stats().tier_prefix_hits >= 1
    assert out.scheduled[0].num_tokens == 3
    drain(sched, runner, rng)  # the fake runner checked the loaded blocks' contents
    assert_all_free(sched)


def test_reset_prefix_cache_forgets_the_tier_too():
    sched, runner = make_setup(6, 16, max_num_batched_tokens=64)
    rng = random.Random(0)
    sched.add_request(make_request("a", range(13), max_tokens=1))
    drain(sched, runner, rng)
    for i in range(3):
        sched.add_request(make_request(f"o{i}", range(100 + 20 * i, 116 + 20 * i), max_tokens=1))
        drain(sched, runner, rng)
    sched.reset_prefix_cache()
    again = make_request("again", range(13), max_tokens=1)
    sched.add_request(again)
    step(sched, runner, rng)
    assert again.num_cached_tokens == 0


def test_auto_preemption_compares_copy_and_recompute_costs():
    kv = PagedKVCacheManager(8, BS)
    request = make_request("r", range(40))
    request.num_computed_tokens = 40
    policy = AutoPreemption(copy_bytes_per_s=1e9, block_bytes=1000, block_size=BS)
    assert policy.should_swap(request, kv)  # nothing measured yet: a copy is assumed cheaper
    policy.observe_step(4, 1.0)  # too few tokens to be a prefill measurement
    assert policy.prefill_tokens_per_s is None
    policy.observe_step(64, 0.001)  # 64,000 tokens/s: 40 tokens in 0.6 ms
    assert policy.should_swap(request, kv)  # 10 blocks x 2 x 1 kB at 1 GB/s: 20 us
    slow_copy = AutoPreemption(copy_bytes_per_s=1e6, block_bytes=1000, block_size=BS)
    slow_copy.observe_step(64, 0.001)
    assert not slow_copy.should_swap(request, kv)  # 20 ms of copying against 0.6 ms
    request.num_computed_tokens = 0
    assert not policy.should_swap(request, kv)  # nothing to keep


def test_preemption_mode_names():
    assert isinstance(make_preemption_policy("recompute"), RecomputePreemption)
    assert isinstance(make_preemption_policy("swap"), SwapPreemption)
    assert isinstance(make_preemption_policy("auto"), RecomputePreemption)  # no tier
    assert isinstance(make_preemption_policy("auto", copy_bytes_per_s=1e9, block_bytes=8),
                      AutoPreemption)
    with pytest.raises(ValueError, match="preemption_mode"):
        make_preemption_policy("sometimes")


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_add_step_abort_swap_streams(data):
    """Random streams over a tiny pool and tier: contents stay right at every step, neither
    tier leaks or frees a block twice, and everything is free at the end."""
    num_blocks = data.draw(st.integers(5, 24))
    tier_blocks = data.draw(st.integers(0, 24))
    cls = data.draw(st.sampled_from([FCFSScheduler, PriorityScheduler]))
    sched, runner = make_setup(
        num_blocks, tier_blocks, mode=data.draw(st.sampled_from(["swap", "recompute"])),
        cls=cls, caching=data.draw(st.booleans()),
        max_num_batched_tokens=data.draw(st.integers(4, 32)),
        max_num_seqs=data.draw(st.integers(1, 6)), max_model_len=40,
        long_prefill_token_threshold=data.draw(st.sampled_from([None, 2, 5])))
    rng = random.Random(data.draw(st.integers(0, 1000)))
    ids: list[str] = []
    for i in range(data.draw(st.integers(1, 40))):
        action = data.draw(st.sampled_from(["add", "step", "step", "abort", "swap"]))
        if action == "add":
            n = data.draw(st.integers(1, min(20, num_blocks * BS)))
            tokens = [data.draw(st.integers(0, 2)) for _ in range(n)]
            req = make_request(f"r{i}", tokens, max_tokens=data.draw(st.integers(1, 8)),
                               priority=data.draw(st.integers(0, 2)))
            if data.draw(st.booleans()):
                req.fork_children = [make_request(f"r{i}#{j}", tokens) for j in range(2)]
            sched.add_request(req)
            ids += [req.req_id] + [c.req_id for c in req.fork_children]
        elif action == "step":
            step(sched, runner, rng)
        elif action == "swap" and sched.running:  # preempt one now, as the scheduler would
            sched._preempt(data.draw(st.sampled_from(sched.running)))
            check_accounting(sched)
        elif action == "abort" and ids:
            sched.abort_requests(data.draw(st.lists(st.sampled_from(ids), max_size=3)))
            check_accounting(sched)
    drain(sched, runner, rng)
    assert_all_free(sched)
