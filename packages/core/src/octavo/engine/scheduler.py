"""Continuous batching: which requests run each step, and how many tokens each computes."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

from octavo.engine.outputs import EngineCoreOutput, RunnerOutput, ScheduledRequest, SchedulerOutput
from octavo.engine.preemption import PreemptionPolicy, RecomputePreemption
from octavo.engine.request_queue import FCFSQueue, PriorityQueue, RequestQueue
from octavo.kv_cache.manager import CachedPrefix, KVCacheManager
from octavo.request import Request, RequestStatus


@dataclass(frozen=True)
class RequestCounts:
    """How many sequences a scheduler holds in each state (an ``n > 1`` request counts once
    per sibling that has started)."""

    running: int
    waiting: int
    swapped: int = 0  # preempted with their KV blocks moved out to a swap tier


class Scheduler(ABC):
    """The engine core's view of scheduling; registered under ``register_schedulers``.

    Args:
        kv_cache: the KV cache manager that owns the blocks; callers read its occupancy
            through this attribute.
        max_num_batched_tokens: the token budget of one step.
        max_num_seqs: the most requests running at once.
        max_model_len: the model's context; prompts that leave no room are refused.
        enable_chunked_prefill: split prompts longer than the budget over several steps.
        long_prefill_token_threshold: with chunked prefill, one request's prompt takes at most
            this many tokens of a step (None: the whole budget), so a long prompt leaves
            room for the others every step instead of holding them back until it is done.
        preemption: what a preempted request's blocks become (``octavo.engine.preemption``:
            recomputed, the default, swapped out to the cache manager's tier, or chosen by
            cost).
    """

    def __init__(self, kv_cache: KVCacheManager, *, max_num_batched_tokens: int,
                 max_num_seqs: int, max_model_len: int, enable_chunked_prefill: bool = True,
                 long_prefill_token_threshold: int | None = None,
                 preemption: PreemptionPolicy | None = None):
        self.kv_cache = kv_cache
        self.preemption = preemption or RecomputePreemption()
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.long_prefill_token_threshold = long_prefill_token_threshold

    @abstractmethod
    def add_request(self, request: Request) -> None:
        """Queue a request (with its ``fork_children``); raises ValueError if it can never run."""

    @abstractmethod
    def abort_requests(self, req_ids: Iterable[str]) -> list[EngineCoreOutput]:
        """Finish the requests now and free their blocks."""

    @abstractmethod
    def schedule(self) -> SchedulerOutput: ...

    @abstractmethod
    def update(self, scheduled: SchedulerOutput, result: RunnerOutput) -> list[EngineCoreOutput]:
        """Advance requests by what the step computed and sampled; finish and free the done."""

    @abstractmethod
    def has_unfinished_requests(self) -> bool: ...

    @abstractmethod
    def request_counts(self) -> RequestCounts:
        """Sequences running, waiting and swapped out now (the server's queue limit and the
        metrics read these); waiting includes ``n > 1`` siblings not yet started."""

    def check_request(self, request: Request) -> None:
        """Raise ValueError if the request can never run under these limits (its prompt does
        not fit the context, the cache, or, without chunked prefill, one step); the engine
        calls it before queueing, so a bad request is refused at once."""
        if request.num_prompt_tokens >= self.max_model_len:
            raise ValueError(
                f"the prompt has {request.num_prompt_tokens} tokens; this model's context is "
                f"{self.max_model_len} tokens, which leaves no room to generate")
        if not self.enable_chunked_prefill and request.num_prompt_tokens > self.max_num_batched_tokens:
            raise ValueError(
                f"the prompt has {request.num_prompt_tokens} tokens, more than "
                f"max_num_batched_tokens={self.max_num_batched_tokens} with chunked prefill off")
        blocks_needed = -(-request.num_prompt_tokens // self.kv_cache.block_size)
        if blocks_needed > self.kv_cache.num_blocks:
            raise ValueError(
                f"the prompt needs {blocks_needed} KV blocks; the cache has only "
                f"{self.kv_cache.num_blocks}")

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix; callers make sure no request is in flight."""
        self.kv_cache.reset_prefix_cache()

    def observe_step(self, num_tokens: int, seconds: float) -> None:
        """The engine ran a step of ``num_tokens`` tokens in ``seconds`` (for cost models)."""
        self.preemption.observe_step(num_tokens, seconds)

    def preemption_counts(self) -> dict[str, int]:
        """Preemptions since start-up by mode (``swap``, ``recompute``)."""
        return dict(self.preemption.counts)

    def chunk_size(self, num_new: int, budget: int, in_prompt: bool) -> int:
        """Tokens a request with ``num_new`` to compute gets this step from ``budget``: a
        prompt chunk is capped by ``long_prefill_token_threshold`` (with chunked prefill)."""
        if in_prompt and self.enable_chunked_prefill and self.long_prefill_token_threshold:
            num_new = min(num_new, self.long_prefill_token_threshold)
        return min(num_new, budget)


@dataclass
class StepPlan:
    """What one ``schedule()`` call has decided so far, and the token budget it has left."""

    budget: int
    tokens: dict[Request, int] = field(default_factory=dict)  # scheduled, in order
    preempted: list[str] = field(default_factory=list)
    finished: list[EngineCoreOutput] = field(default_factory=list)

    def add(self, request: Request, num_tokens: int) -> None:
        self.tokens[request] = num_tokens
        self.budget -= num_tokens

    def drop(self, request: Request) -> None:
        """Take back a request scheduled earlier in this step (it is being preempted)."""
        self.budget += self.tokens.pop(request, 0)

    def output(self, kv_cache: KVCacheManager) -> SchedulerOutput:
        scheduled = [ScheduledRequest(request, num, kv_cache.block_ids(request))
                     for request, num in self.tokens.items()]
        return SchedulerOutput(scheduled=scheduled, block_copies=kv_cache.take_block_copies(),
                               preempted_req_ids=self.preempted, finished=self.finished)


class ContinuousBatchingScheduler(Scheduler):
    """Running requests first, then waiting ones, under a per-step token budget.

    Long prompts are chunked. When blocks run out the queue policy picks a running request to
    preempt; the preemption policy swaps its blocks out to the cache manager's tier or frees
    them to be recomputed later (the prefix cache often makes that cheap). Requests with ``n > 1`` siblings fork the prompt's blocks once it is computed.
    """

    queue_class: type[RequestQueue] = FCFSQueue

    def __init__(self, kv_cache, **kwargs):
        super().__init__(kv_cache, **kwargs)
        self.waiting: RequestQueue = self.queue_class()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_unforked = 0  # n > 1 siblings still waiting for their leader's prompt

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, request):
        if request.req_id in self.requests:
            raise ValueError(f"request id {request.req_id!r} is already in use")
        self.check_request(request)
        self.requests[request.req_id] = request
        for child in request.fork_children:
            self.requests[child.req_id] = child
            child.fork_parent = request
        self.num_unforked += len(request.fork_children)
        self.waiting.add(request)

    def abort_requests(self, req_ids):
        """O(aborted + running): thousands of ``n > 1`` siblings go at once."""
        doomed = {req_id: self.requests[req_id] for req_id in req_ids if req_id in self.requests}
        if not doomed:
            return []
        self._detach_unforked(doomed)
        self.running = [r for r in self.running if r.req_id not in doomed]
        for request in doomed.values():
            if request in self.waiting:
                self.waiting.remove(request)
            self._finish(request, RequestStatus.FINISHED_ABORTED)
        return [EngineCoreOutput(req_id, finish_reason="abort") for req_id in doomed]

    def has_unfinished_requests(self):
        return bool(self.requests)

    def request_counts(self) -> RequestCounts:
        swapped = self.kv_cache.num_swapped_requests  # they wait in the queue to resume
        return RequestCounts(running=len(self.running),
                             waiting=len(self.waiting) - swapped + self.num_unforked,
                             swapped=swapped)

    # -- scheduling -------------------------------------------------------------------------
    def schedule(self):
        plan = StepPlan(self.max_num_batched_tokens)
        self._schedule_running(plan)
        if not plan.preempted:  # blocks are short: admit nobody new this step
            self._schedule_waiting(plan)
        return plan.output(self.kv_cache)

    def _schedule_running(self, plan: StepPlan) -> None:
        """Give each running request its next tokens, preempting others when blocks run out."""
        for request in list(self.running):
            if plan.budget <= 0:
                return
            if request.status != RequestStatus.RUNNING:
                continue  # preempted earlier in this step
            num_new = self.chunk_size(request.num_tokens - request.num_computed_tokens,
                                      plan.budget, request.num_computed_tokens
                                      < request.num_prompt_tokens)
            if self._exceeds_cache(request.num_computed_tokens + num_new):
                self.running.remove(request)  # it cannot fit even alone: end it, don't thrash
                self._finish(request, RequestStatus.FINISHED_LENGTH)
                plan.finished.append(EngineCoreOutput(request.req_id, finish_reason="length"))
            elif self._make_room(request, num_new, plan):
                plan.add(request, num_new)

    def _make_room(self, request: Request, num_new: int, plan: StepPlan) -> bool:
        """Allocate the request's slots, preempting victims until they fit; False when the
        request itself had to be preempted."""
        while not self.kv_cache.allocate_slots(request, num_new):
            victim = self.waiting.victim(self.running)
            if victim is request and self._release_waiting_blocks(keep=None):
                continue  # waiting forked siblings held the blocks it needs
            plan.drop(victim)
            self._preempt(victim)
            plan.preempted.append(victim.req_id)
            if victim is request:
                return False
        return True

    def _schedule_waiting(self, plan: StepPlan) -> None:
        """Admit waiting requests in queue order while budget, sequences and blocks last."""
        while self.waiting and plan.budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting.peek()
            prefix = self._cached_prefix(request)
            num_computed = prefix.num_tokens if prefix else request.num_computed_tokens
            num_new = request.num_tokens - num_computed
            if num_new > plan.budget and not self.enable_chunked_prefill:
                return
            num_new = self.chunk_size(num_new, plan.budget, num_computed < request.num_prompt_tokens)
            if not self.kv_cache.allocate_slots(request, num_new, prefix):
                if not self.running and self._release_waiting_blocks(keep=request):
                    continue  # forked siblings held the blocks; they recompute later
                return
            self.waiting.pop()
            self._start_running(request, num_computed)
            plan.add(request, num_new)

    def _cached_prefix(self, request: Request) -> CachedPrefix | None:
        """The reusable cached prefix of a request that has computed nothing yet (None once it
        has, or when it asks for prompt logprobs, which need every prompt position)."""
        if request.num_computed_tokens or request.sampling_params.prompt_logprobs is not None:
            return None
        return self.kv_cache.find_cached_prefix(request)

    def _start_running(self, request: Request, num_computed: int) -> None:
        request.num_computed_tokens = num_computed
        if request.first_scheduled_time is None:
            request.first_scheduled_time = time.monotonic()
            request.num_cached_tokens = num_computed
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _exceeds_cache(self, num_tokens: int) -> bool:
        return -(-num_tokens // self.kv_cache.block_size) > self.kv_cache.num_blocks

    def _release_waiting_blocks(self, keep: Request | None) -> bool:
        """Free the blocks of waiting requests other than ``keep``; True if any were held."""
        released = False
        for request in list(self.waiting):
            if request is not keep and self.kv_cache.block_ids(request):
                self.kv_cache.free(request)
                request.num_computed_tokens = 0
                released = True
        return released

    def _preempt(self, request: Request) -> None:
        """Take a running request off the device: the policy swaps its blocks out (it keeps
        its progress; ``allocate_slots`` swaps them in when it is admitted again) or frees
        them (it recomputes)."""
        self.running.remove(request)
        self.preemption.preempt(request, self.kv_cache)
        request.num_preemptions += 1
        request.status = RequestStatus.PREEMPTED
        self.waiting.add_front(request)

    # -- results ----------------------------------------------------------------------------
    def update(self, scheduled, result):
        outputs = list(scheduled.finished)
        for item in scheduled.scheduled:
            request = item.request
            if request.is_finished or request.status != RequestStatus.RUNNING:
                continue  # aborted or preempted while the step ran
            request.num_computed_tokens += item.num_tokens
            self.kv_cache.cache_computed_blocks(request)
            out = EngineCoreOutput(request.req_id)
            if request.req_id in result.prompt_logprobs:
                out.prompt_logprobs = result.prompt_logprobs[request.req_id]
            token = result.sampled_token_ids.get(request.req_id)
            if token is not None:
                self._append_sampled(request, token, result, out)
            if out.new_token_ids or out.prompt_logprobs or out.finished:
                outputs.append(out)
        return outputs

    def _append_sampled(self, request: Request, token: int, result: RunnerOutput,
                        out: EngineCoreOutput) -> None:
        """Add a sampled token to the request (and ``out``), fork waiting siblings, and finish
        the request if the token stops it."""
        if request.first_token_time is None:
            request.first_token_time = time.monotonic()
        request.append_token(token)
        out.new_token_ids.append(token)
        if request.req_id in result.logprobs:
            out.new_logprobs.append(result.logprobs[request.req_id])
        if request.fork_children:
            self._fork_children(request)
        status = self._check_stop(request, token)
        if status is not None:
            self.running.remove(request)
            self._finish(request, status)
            out.finish_reason = status.value
            out.stop_reason = request.stop_reason

    def _check_stop(self, request: Request, token: int) -> RequestStatus | None:
        params = request.sampling_params
        num_output = len(request.output_token_ids)
        if num_output >= params.min_tokens:
            if not params.ignore_eos and token in request.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED
            if params.stop_token_ids and token in params.stop_token_ids:
                request.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and num_output >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _fork_children(self, parent: Request) -> None:
        """Siblings share the parent's prompt blocks and recompute only its last token."""
        for child in reversed(parent.fork_children):
            self.kv_cache.fork(parent, child, parent.num_prompt_tokens)
            child.num_computed_tokens = parent.num_prompt_tokens - 1
            child.fork_parent = None
            self.waiting.add_front(child)
        self.num_unforked -= len(parent.fork_children)
        parent.fork_children = []

    def _detach_unforked(self, doomed: dict[str, Request]) -> None:
        """Unforked siblings leave with their aborted requests: an aborted leader hands the
        survivors to the first of them, and an aborted sibling leaves its live leader's list."""
        live_leaders: dict[str, Request] = {}
        for request in doomed.values():
            parent = request.fork_parent
            if parent is not None and parent.req_id not in doomed:
                live_leaders[parent.req_id] = parent
            if request.fork_children:
                self._hand_over(request, [c for c in request.fork_children
                                          if c.req_id not in doomed])
        for leader in live_leaders.values():
            kept = [c for c in leader.fork_children if c.req_id not in doomed]
            self.num_unforked -= len(leader.fork_children) - len(kept)
            leader.fork_children = kept

    def _hand_over(self, leader: Request, survivors: list[Request]) -> None:
        """An aborted leader's surviving siblings wait for the first of them instead."""
        self.num_unforked -= len(leader.fork_children)
        leader.fork_children = []
        if not survivors:
            return
        heir, *rest = survivors
        heir.fork_parent, heir.fork_children = None, rest
        for child in rest:
            child.fork_parent = heir
        self.num_unforked += len(rest)
        self.waiting.add(heir)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        self.kv_cache.free(request)
        self.requests.pop(request.req_id, None)


class FCFSScheduler(ContinuousBatchingScheduler):
    """First come, first served; preempts the latest arrival."""

    queue_class = FCFSQueue


class PriorityScheduler(ContinuousBatchingScheduler):
    """Lowest priority value first (ties by arrival); preempts the lowest-priority, latest."""

    queue_class = PriorityQueue
