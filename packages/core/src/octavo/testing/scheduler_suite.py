"""Conformance suite for schedulers; a scheduler plugin subclasses it.

The suite drives the registered scheduler the way the engine core does — ``add_request``,
then ``schedule()`` / ``update()`` each step with a fake model that samples a fixed token for
every request whose step reaches its last token — over a real KV cache manager, and checks the
:class:`~octavo.engine.scheduler.Scheduler` contract after every step:

- the step's tokens stay within ``max_num_batched_tokens``, and at most ``max_num_seqs``
  requests run; each scheduled request is running, computes at least one token, appears once,
  and its block table covers every token it will have computed;
- a request reported as preempted is not scheduled in that step;
- ``request_counts()`` adds up to the sequences not finished yet.

And over whole runs: requests join a running batch and leave it as they finish (continuous
batching), long prompts are chunked under the budget, aborted requests end with ``"abort"``
and never run again, every request ends with its ``max_tokens`` tokens, preemption under
memory pressure makes progress, and once everything has finished every KV block is free again.
Usage::

    from octavo.testing.scheduler_suite import SchedulerSuite

    class TestMyScheduler(SchedulerSuite):
        registered_name = "my-scheduler"   # the name the plugin registers
        supports_priority = True           # lower Request.priority runs first
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable
from typing import ClassVar

import pytest

from octavo.engine.outputs import EngineCoreOutput, RunnerOutput, SchedulerOutput
from octavo.engine.scheduler import Scheduler
from octavo.kv_cache.manager import KVCacheManager
from octavo.request import Request, RequestStatus
from octavo.sampling_params import SamplingParams
from octavo.testing.suite import ConformanceSuite

__all__ = ["SchedulerSuite", "make_request"]

TOKEN = 7  # what the fake model samples


def make_request(req_id: str, num_prompt: int, max_tokens: int = 4, priority: int = 0,
                 arrival: float | None = None) -> Request:
    """A request of ``num_prompt`` distinct prompt tokens that stops after ``max_tokens``."""
    first = 10 + zlib.crc32(req_id.encode()) % 1000
    request = Request(req_id, [first + i for i in range(num_prompt)],
                      SamplingParams(max_tokens=max_tokens, ignore_eos=True), priority=priority)
    if arrival is not None:
        request.arrival_time = arrival
    return request


class SchedulerSuite(ConformanceSuite):
    """Conformance tests for a :class:`~octavo.engine.scheduler.Scheduler` implementation.

    The scheduler is built as the engine builds it:
    ``cls(kv_cache, max_num_batched_tokens=..., max_num_seqs=..., max_model_len=...,
    enable_chunked_prefill=..., long_prefill_token_threshold=..., preemption=None)``.

    Attributes:
        registered_name: the scheduler's registered name (required).
        kv_cache_manager: the registered KV cache manager it runs over.
        block_size: tokens per KV block in every test.
        supports_priority: run the priority test (lower ``Request.priority`` runs first).
        supports_fork: run the ``n > 1`` test (a request's ``fork_children``).
        max_steps: a run that has not finished after this many steps fails (a scheduler that
            stops making progress).
    """

    registry_hook = "register_schedulers"
    kv_cache_manager: ClassVar[str] = "paged"
    block_size: ClassVar[int] = 4
    supports_priority: ClassVar[bool] = False
    supports_fork: ClassVar[bool] = True
    max_steps: ClassVar[int] = 500

    # -- building -----------------------------------------------------------------------------
    def make_kv_cache(self, num_blocks: int, enable_prefix_caching: bool = True) -> KVCacheManager:
        from octavo.plugins import kv_cache_managers

        return kv_cache_managers().get(self.kv_cache_manager)(
            num_blocks, self.block_size, enable_prefix_caching=enable_prefix_caching)

    def make_scheduler(self, num_blocks: int = 64, *, max_num_batched_tokens: int = 16,
                       max_num_seqs: int = 8, max_model_len: int = 256,
                       enable_chunked_prefill: bool = True,
                       long_prefill_token_threshold: int | None = None,
                       enable_prefix_caching: bool = True) -> Scheduler:
        """The scheduler under test (override to pass extra constructor arguments); the
        limits it is given are kept in ``self.limits`` for the checks."""
        self.limits = dict(max_num_batched_tokens=max_num_batched_tokens,
                           max_num_seqs=max_num_seqs)
        return self.implementation()(
            self.make_kv_cache(num_blocks, enable_prefix_caching),
            max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
            max_model_len=max_model_len, enable_chunked_prefill=enable_chunked_prefill,
            long_prefill_token_threshold=long_prefill_token_threshold, preemption=None)

    # -- driving ------------------------------------------------------------------------------
    def step(self, scheduler: Scheduler, live: dict[str, Request]
             ) -> tuple[SchedulerOutput, list[EngineCoreOutput]]:
        """One engine step with the contract checked; ``live`` maps the unfinished requests
        by id (finished ones are removed)."""
        out = scheduler.schedule()
        self.check_step(scheduler, out)
        result = RunnerOutput()
        for item in out.scheduled:
            if item.samples:
                result.sampled_token_ids[item.request.req_id] = TOKEN
        outputs = [*scheduler.update(out, result)]
        for output in outputs:
            if output.finished:
                live.pop(output.req_id, None)
        self.check_counts(scheduler, live)
        return out, outputs

    def run(self, scheduler: Scheduler, requests: Iterable[Request],
            arrivals: dict[int, list[Request]] | None = None,
            live: dict[str, Request] | None = None) -> list[SchedulerOutput]:
        """Add ``requests``, then step until nothing is unfinished (adding ``arrivals[k]``
        before step ``k``); return every step's output. ``live``: requests added earlier and
        not finished yet."""
        live = {} if live is None else live
        for request in requests:
            scheduler.add_request(request)
            live[request.req_id] = request
        pending = dict(arrivals or {})
        steps: list[SchedulerOutput] = []
        while scheduler.has_unfinished_requests() or pending:
            for request in pending.pop(len(steps), []):
                scheduler.add_request(request)
                live[request.req_id] = request
            out, _ = self.step(scheduler, live)
            steps.append(out)
            assert len(steps) <= self.max_steps, (
                f"not finished after {self.max_steps} steps: {sorted(live)} still unfinished")
        assert not live, f"has_unfinished_requests() is False but {sorted(live)} never finished"
        self.check_all_blocks_free(scheduler)
        return steps

    # -- checks -------------------------------------------------------------------------------
    def check_step(self, scheduler: Scheduler, out: SchedulerOutput) -> None:
        budget, max_seqs = self.limits["max_num_batched_tokens"], self.limits["max_num_seqs"]
        assert out.num_tokens <= budget, (
            f"{out.num_tokens} tokens scheduled, over the budget of {budget}")
        assert len(out.scheduled) <= max_seqs, f"{len(out.scheduled)} requests run at once"
        ids = [item.request.req_id for item in out.scheduled]
        assert len(ids) == len(set(ids)), f"a request was scheduled twice in one step: {ids}"
        assert not set(ids) & set(out.preempted_req_ids), "a preempted request was scheduled"
        block_size = scheduler.kv_cache.block_size
        for item in out.scheduled:
            request = item.request
            assert item.num_tokens > 0, f"{request.req_id} scheduled for 0 tokens"
            assert request.status == RequestStatus.RUNNING, f"{request.req_id} is {request.status}"
            end = request.num_computed_tokens + item.num_tokens
            assert end <= request.num_tokens, f"{request.req_id} computes past its tokens"
            assert len(item.block_ids) >= -(-end // block_size), (
                f"{request.req_id}'s block table {item.block_ids} does not hold {end} tokens")
            assert all(0 <= b < scheduler.kv_cache.num_blocks for b in item.block_ids)

    def check_counts(self, scheduler: Scheduler, live: dict[str, Request]) -> None:
        counts = scheduler.request_counts()
        assert min(counts.running, counts.waiting, counts.swapped) >= 0
        assert counts.running + counts.waiting + counts.swapped == len(live), (
            f"request_counts() {counts} does not add up to the {len(live)} unfinished requests")

    def check_all_blocks_free(self, scheduler: Scheduler) -> None:
        kv = scheduler.kv_cache
        assert kv.num_free_blocks == kv.num_blocks, (
            f"{kv.num_blocks - kv.num_free_blocks} KV blocks leaked after every request ended")

    @staticmethod
    def check_outputs(requests: Iterable[Request]) -> None:
        for request in requests:
            assert request.is_finished, f"{request.req_id} is {request.status}"
            if request.status != RequestStatus.FINISHED_ABORTED:
                expected = [TOKEN] * request.sampling_params.max_tokens
                assert request.output_token_ids == expected, request.req_id

    # -- tests --------------------------------------------------------------------------------
    def test_is_a_scheduler(self) -> None:
        assert issubclass(self.implementation(), Scheduler)

    def test_one_request_runs_to_its_max_tokens(self) -> None:
        scheduler = self.make_scheduler()
        request = make_request("a", 6, max_tokens=5)
        self.run(scheduler, [request])
        self.check_outputs([request])
        assert request.status == RequestStatus.FINISHED_LENGTH

    def test_requests_join_and_leave_every_step(self) -> None:
        """A request that arrives while others decode runs in the next step; a finished one
        is never scheduled again."""
        scheduler = self.make_scheduler(max_num_batched_tokens=64)
        requests = [make_request(f"r{i}", 3 + i % 4, max_tokens=2 + i % 5) for i in range(12)]
        arrivals = {step: [requests[step]] for step in range(1, len(requests))}
        steps = self.run(scheduler, requests[:1], arrivals)
        for k in range(1, len(requests)):
            ran = {item.request.req_id for item in steps[k].scheduled}
            assert requests[k].req_id in ran, f"r{k} arrived before step {k} but did not run in it"
        self.check_outputs(requests)  # and check_step saw only running requests scheduled

    def test_token_budget_chunks_long_prompts(self) -> None:
        scheduler = self.make_scheduler(max_num_batched_tokens=8)
        long, short = make_request("long", 30, max_tokens=3), make_request("short", 5)
        steps = self.run(scheduler, [long, short])
        assert sum(item.num_tokens for out in steps for item in out.scheduled
                   if item.request is long) == 30 + 3 - 1
        self.check_outputs([long, short])

    def test_a_long_prompt_without_chunked_prefill_is_refused(self) -> None:
        scheduler = self.make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False)
        with pytest.raises(ValueError):
            scheduler.add_request(make_request("long", 9))
        request = make_request("fits", 8)
        self.run(scheduler, [request])
        self.check_outputs([request])

    def test_a_prompt_longer_than_the_context_is_refused(self) -> None:
        scheduler = self.make_scheduler(max_model_len=16)
        with pytest.raises(ValueError):
            scheduler.add_request(make_request("too-long", 16))
        assert not scheduler.has_unfinished_requests()

    def test_max_num_seqs_caps_the_batch(self) -> None:
        scheduler = self.make_scheduler(max_num_batched_tokens=64, max_num_seqs=2)
        requests = [make_request(f"r{i}", 3, max_tokens=3) for i in range(5)]
        steps = self.run(scheduler, requests)
        assert max(len(out.scheduled) for out in steps) == 2
        self.check_outputs(requests)

    def test_abort_frees_blocks_and_stops_the_request(self) -> None:
        scheduler = self.make_scheduler(max_num_batched_tokens=8, max_num_seqs=2)
        running, chunked, waiting, kept = (make_request("running", 3, max_tokens=20),
                                           make_request("chunked", 20, max_tokens=20),
                                           make_request("waiting", 4, max_tokens=20),
                                           make_request("kept", 4, max_tokens=3))
        live = {}
        for request in (running, chunked, waiting, kept):
            scheduler.add_request(request)
            live[request.req_id] = request
        for _ in range(2):
            self.step(scheduler, live)
        outputs = scheduler.abort_requests(["running", "chunked", "waiting", "no-such-id"])
        assert {o.req_id: o.finish_reason for o in outputs} == {
            "running": "abort", "chunked": "abort", "waiting": "abort"}
        for req_id in ("running", "chunked", "waiting"):
            del live[req_id]
        self.check_counts(scheduler, live)
        assert scheduler.abort_requests(["running"]) == [], "aborting twice reports again"
        steps = self.run(scheduler, [], live=live)
        aborted = {"running", "chunked", "waiting"}
        assert not any(item.request.req_id in aborted for out in steps for item in out.scheduled)
        self.check_outputs([running, chunked, waiting, kept])
        assert running.status == RequestStatus.FINISHED_ABORTED

    def test_abort_everything_leaves_no_blocks(self) -> None:
        scheduler = self.make_scheduler(num_blocks=16, max_num_batched_tokens=12)
        requests = [make_request(f"r{i}", 5 + 3 * i, max_tokens=8) for i in range(5)]
        live = {}
        for request in requests:
            scheduler.add_request(request)
            live[request.req_id] = request
        for _ in range(3):
            self.step(scheduler, live)
        scheduler.abort_requests([r.req_id for r in requests])
        assert not scheduler.has_unfinished_requests()
        self.check_all_blocks_free(scheduler)

    def test_preemption_under_memory_pressure(self) -> None:
        """Two requests admitted together outgrow a four-block cache: one is preempted (its
        blocks freed or swapped), both still end with every token, and no block leaks."""
        scheduler = self.make_scheduler(num_blocks=4, max_num_batched_tokens=64)
        a = make_request("a", 7, max_tokens=6, arrival=1.0)
        b = make_request("b", 7, max_tokens=6, arrival=2.0)
        steps = self.run(scheduler, [a, b])
        preempted = [req_id for out in steps for req_id in out.preempted_req_ids]
        assert preempted, "nothing was preempted, yet both requests cannot fit the cache"
        self.check_outputs([a, b])

    def test_random_workload_keeps_the_contract(self) -> None:
        """Arrivals, aborts and a small cache at random; every step checked."""
        rng = random.Random(0)
        scheduler = self.make_scheduler(num_blocks=24, max_num_batched_tokens=16,
                                        max_num_seqs=4, long_prefill_token_threshold=8)
        live: dict[str, Request] = {}
        everyone: list[Request] = []
        for step in range(150):
            if step < 100 and rng.random() < 0.4:
                request = make_request(f"r{step}", rng.randint(1, 30),
                                       max_tokens=rng.randint(1, 12))
                scheduler.add_request(request)
                live[request.req_id] = request
                everyone.append(request)
            if live and rng.random() < 0.05:
                victim = rng.choice(sorted(live))
                scheduler.abort_requests([victim])
                del live[victim]
            self.step(scheduler, live)
        self.run(scheduler, [], live=live)
        self.check_outputs(everyone)

    def test_n_siblings_share_the_prompt_and_finish(self) -> None:
        """A request with ``fork_children`` (``n > 1``): every sibling ends with its tokens,
        and their shared blocks are all free afterwards."""
        if not self.supports_fork:
            pytest.skip(f"{self.registered_name!r} declares no n > 1 support (supports_fork)")
        scheduler = self.make_scheduler(max_num_batched_tokens=32)
        leader = make_request("lead", 9, max_tokens=5)
        siblings = [make_request(f"lead#{i}", 9, max_tokens=5) for i in (1, 2)]
        for sibling in siblings:
            sibling.prompt_token_ids = list(leader.prompt_token_ids)
        leader.fork_children = list(siblings)
        everyone = [leader, *siblings]
        scheduler.add_request(leader)
        self.run(scheduler, [], live={r.req_id: r for r in everyone})
        self.check_outputs(everyone)

    def test_priority_orders_the_queue(self) -> None:
        if not self.supports_priority:
            pytest.skip(f"{self.registered_name!r} declares no priorities (supports_priority)")
        scheduler = self.make_scheduler(max_num_batched_tokens=64, max_num_seqs=1)
        low = make_request("low", 4, priority=5, arrival=1.0)
        high = make_request("high", 4, priority=0, arrival=2.0)
        steps = self.run(scheduler, [low, high])
        assert steps[0].scheduled[0].request is high
        self.check_outputs([low, high])

    def test_priority_preempts_the_lowest_first(self) -> None:
        if not self.supports_priority:
            pytest.skip(f"{self.registered_name!r} declares no priorities (supports_priority)")
        scheduler = self.make_scheduler(num_blocks=4, max_num_batched_tokens=64)
        low = make_request("low", 7, max_tokens=6, priority=5, arrival=1.0)
        high = make_request("high", 7, max_tokens=6, priority=0, arrival=2.0)
        steps = self.run(scheduler, [low, high])
        preempted = [req_id for out in steps for req_id in out.preempted_req_ids]
        assert preempted and "high" not in preempted, preempted
        self.check_outputs([low, high])
