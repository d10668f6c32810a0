"""The synchronous engine: requests in, ``RequestOutput``s out, one step at a time."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from octavo.engine.builder import EngineConfig, build_engine_core
from octavo.engine.engine_core import EngineCore
from octavo.engine.input_processor import InputProcessor, PromptType
from octavo.engine.output_processor import OutputProcessor
from octavo.engine.stats import EngineInfo, EngineStats
from octavo.outputs import RequestOutput
from octavo.request import Request
from octavo.sampling_params import SamplingParams


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request, ready to queue: its core requests (the leader first, then its
    ``n - 1`` siblings)."""

    request_id: str
    text: str | None
    token_ids: list[int]
    params: SamplingParams
    core_requests: list[Request]


class LLMEngine:
    """Tokenizes and validates requests, steps the engine core, detokenizes the results."""

    def __init__(self, core: EngineCore, tokenizer, *, vocab_size: int, max_model_len: int,
                 eos_token_ids: frozenset[int] = frozenset(), device: torch.device | None = None):
        self.core = core
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.device = device or torch.device("cpu")
        self.inputs = InputProcessor(tokenizer, vocab_size, max_model_len)
        self.outputs = OutputProcessor(tokenizer)
        self._ids = itertools.count()
        kv_cache = core.scheduler.kv_cache
        self.info = EngineInfo(
            architecture=core.runner.architecture, device=self.device,
            dtype=core.runner.dtype, max_model_len=max_model_len,
            vocab_size=vocab_size, num_kv_blocks=kv_cache.num_blocks,
            block_size=kv_cache.block_size)

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        from octavo.engine.choices import check_component_names
        from octavo.model_loader.loader import load_model

        check_component_names(config)  # before the model loads: a typo fails at once
        torch.manual_seed(config.model.seed)  # unseeded requests draw from the default generator
        if config.parallel.executor_backend != "uni":
            return cls._with_workers(config)
        loaded = load_model(config.model)
        core = build_engine_core(loaded, config.cache, config.scheduler, loaded.max_model_len)
        return cls(core, loaded.tokenizer, vocab_size=loaded.hf_config.vocab_size,
                   max_model_len=loaded.max_model_len, eos_token_ids=loaded.eos_token_ids,
                   device=loaded.device)

    @classmethod
    def _with_workers(cls, config: EngineConfig) -> LLMEngine:
        """The driver of ``tensor_parallel_size`` workers: it reads the model's config and
        tokenizer, checks the heads split over the ranks, then starts the workers, which load
        the shards. It samples on the CPU (the workers send it their logits)."""
        from octavo.engine.builder import assemble_engine_core, start_distributed_executor
        from octavo.model_loader.loader import check_tensor_parallel, plan_model

        plan = plan_model(config.model)
        check_tensor_parallel(plan, config.parallel.tensor_parallel_size)  # before any process
        executor = start_distributed_executor(config)
        try:
            core = assemble_engine_core(executor, executor.num_blocks, config.cache,
                                        config.scheduler, plan.max_model_len)
        except BaseException:
            executor.shutdown()
            raise
        return cls(core, plan.tokenizer, vocab_size=plan.hf_config.vocab_size,
                   max_model_len=plan.max_model_len, eos_token_ids=plan.eos_token_ids,
                   device=torch.device("cpu"))

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (they also stop when the engine is
        garbage-collected or the interpreter exits)."""
        self.core.shutdown()

    def next_request_id(self) -> str:
        return f"req-{next(self._ids)}"  # apart from ids callers choose (digits, UUIDs)

    def process_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """``(text, token ids)`` of a prompt as ``add_request`` would queue it (text is None for
        token ids); raises ValueError on a prompt the engine would refuse."""
        return self.inputs.process(prompt)

    def stats(self) -> EngineStats:
        """Requests running, waiting and swapped, and the KV cache's occupancy, now."""
        return self.core.stats()

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams,
                    priority: int = 0) -> None:
        """Validate and queue a request; raises ValueError (and queues nothing) on bad input."""
        self.admit(self.prepare_request(request_id, prompt, params, priority))

    def prepare_request(self, request_id: str, prompt: PromptType, params: SamplingParams,
                        priority: int = 0) -> PreparedRequest:
        """Validate a request and build its core requests without touching the engine's state,
        so it may run on any thread while a step runs; raises ValueError on bad input."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling params must be SamplingParams, not {type(params).__name__}")
        text, token_ids = self.process_prompt(prompt)
        params.verify_token_ids(self.inputs.vocab_size)
        children = [self._core_request(request_id if params.n == 1 else f"{request_id}#{i}",
                                       token_ids, params.clone_for_child(i) if params.n > 1 else params,
                                       priority)
                    for i in range(params.n)]
        leader, *siblings = children
        leader.fork_children = siblings
        self.core.check_request(leader)
        return PreparedRequest(request_id, text, token_ids, params, children)

    def admit(self, prepared: PreparedRequest) -> None:
        """Queue a prepared request (between steps); ValueError if its id is in use."""
        if self.outputs.has_request(prepared.request_id):
            raise ValueError(f"request id {prepared.request_id!r} is already in use")
        self.core.add_request(prepared.core_requests[0])
        self.outputs.add_request(prepared.request_id, prepared.text, prepared.token_ids,
                                 prepared.params, prepared.core_requests)

    def _core_request(self, req_id: str, token_ids: list[int], params: SamplingParams,
                      priority: int) -> Request:
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed)
        return Request(req_id, list(token_ids), params, eos_token_ids=self.eos_token_ids,
                       priority=priority, generator=generator)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now; its blocks return to the pool at once."""
        self.core.abort_requests(self.outputs.core_ids(request_id))
        return self.outputs.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix block, so later requests compute their whole prompts
        (a benchmark pass after another, or after a weight change).

        Raises:
            RuntimeError: requests are in flight (their blocks would stay shared).
        """
        if self.has_unfinished_requests():
            raise RuntimeError("cannot reset the prefix cache while requests are in flight")
        self.core.reset_prefix_cache()

    def step(self) -> list[RequestOutput]:
        core_outputs = self.core.step()
        outputs, stopped = self.outputs.process(core_outputs)
        if stopped:
            self.core.abort_requests(stopped)  # stop strings finish in the front end
        return outputs
