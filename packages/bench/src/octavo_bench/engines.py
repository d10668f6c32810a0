"""The engines a throughput run compares: each loads once, then generates a whole workload.

An engine returns, per request, exactly ``output_len`` generated token ids (EOS ignored) and
what it knows about its KV cache use. :func:`measure` times it and records the machine load,
the process's CPU time and its peak resident memory around the run. An engine that runs in
another process (vLLM) times itself there and returns its figures as a :class:`RunTiming`.
The llama.cpp engine is in :mod:`octavo_bench.llama_cpp_engine`, vLLM's in
:mod:`octavo_bench.vllm_engine`.
"""

from __future__ import annotations

import gc
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

from tqdm.auto import tqdm

from octavo_bench.machine import LoadWindow, peak_rss_bytes, reset_peak_rss
from octavo_bench.timing import BatchTiming
from octavo_bench.workload import BenchRequest


@dataclass
class KVUsage:
    """Tokens whose K/V an engine stored over the token slots it allocated for them.

    ``mean`` averages over the steps (or batches) of the run; ``peak`` is the ratio at the
    moment the most tokens were stored (the fullest cache).
    """

    mean: float
    peak: float


@dataclass
class RunTiming:
    """The timed run of an engine that measured itself (in its own process): wall and CPU
    seconds of the generation alone, its start-up, the load average and peak memory."""

    seconds: float
    load_seconds: float
    cpu_seconds: float | None
    load_before: float
    load_after: float
    peak_rss_bytes: int | None = None


@dataclass
class Generation:
    token_ids: list[list[int]]
    kv_usage: KVUsage | None = None
    timing: RunTiming | None = None  # set by engines that run out of this process


class Engine(Protocol):
    name: str

    def load(self) -> None: ...

    def warmup(self, requests: list[BenchRequest]) -> None: ...

    def generate(self, requests: list[BenchRequest], progress: bool) -> Generation: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass
class EngineRun:
    """One engine's measured pass over a workload."""

    engine: str
    seconds: float
    load_seconds: float
    token_ids: list[list[int]] = field(repr=False)
    kv_usage: KVUsage | None
    peak_rss_bytes: int | None
    load_before: float
    load_after: float
    details: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float | None = None  # process CPU time of the timed run, all threads


def measure(engine: Engine, requests: list[BenchRequest], *, progress: bool = True) -> EngineRun:
    """Load, warm up and time ``engine`` on ``requests``; frees the engine afterwards."""
    loading = LoadWindow()
    engine.load()
    load_seconds = loading.close().seconds
    try:
        engine.warmup(requests)
        rss_tracked = reset_peak_rss()
        window = LoadWindow()
        generation = engine.generate(requests, progress)
        window.close()
        if len(generation.token_ids) != len(requests):
            raise RuntimeError(f"{engine.name} answered {len(generation.token_ids)} of "
                               f"{len(requests)} requests")
        for request, tokens in zip(requests, generation.token_ids):
            if len(tokens) != request.output_len:
                raise RuntimeError(f"{engine.name} generated {len(tokens)} tokens for a request "
                                   f"that asked for {request.output_len}")
        timing = generation.timing or RunTiming(
            window.seconds, load_seconds, window.cpu_seconds, window.load_before,
            window.load_after, peak_rss_bytes() if rss_tracked else None)
        return EngineRun(engine.name, timing.seconds, timing.load_seconds, generation.token_ids,
                         generation.kv_usage, timing.peak_rss_bytes, timing.load_before,
                         timing.load_after, engine.describe(), timing.cpu_seconds)
    finally:
        engine.close()
        gc.collect()


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="req", disable=not enabled, leave=False)


def add_bench_requests(engine, requests: list[BenchRequest]) -> list[str]:
    """Queue ``requests`` on an ``LLMEngine``: greedy, EOS ignored; their request ids."""
    from octavo.sampling_params import SamplingParams

    ids = []
    for request in requests:
        request_id = engine.next_request_id()
        engine.add_request(request_id, list(request.prompt_token_ids),
                           SamplingParams(temperature=0, max_tokens=request.output_len,
                                          ignore_eos=True))
        ids.append(request_id)
    return ids


class OctavoEngine:
    """Octavo's offline engine, stepped directly so the KV cache can be sampled every step."""

    name = "octavo"

    def __init__(self, model: str | None, **options: Any) -> None:
        self.model = model
        self.options = options
        self.llm = None

    def load(self) -> None:
        from octavo.entrypoints.llm import LLM

        self.llm = LLM(self.model, **self.options)

    def warmup(self, requests: list[BenchRequest]) -> None:
        short = [BenchRequest(r.prompt_token_ids[:16], 4) for r in requests[:2]]
        self._run(short, progress=False)
        self.llm.reset_prefix_cache()  # the timed run must compute those prompt blocks itself

    def generate(self, requests: list[BenchRequest], progress: bool) -> Generation:
        return self._run(requests, progress)

    def _run(self, requests: list[BenchRequest], progress: bool) -> Generation:
        engine = self.llm.engine
        scheduler = engine.core.scheduler
        kv = scheduler.kv_cache
        ids = add_bench_requests(engine, requests)
        finished: dict[str, list[int]] = {}
        ratios, peak = [], (0, 1)
        with progress_bar(len(requests), "octavo", progress) as bar:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        finished[output.request_id] = list(output.outputs[0].token_ids)
                        bar.update(1)
                allocated = (kv.num_blocks - kv.num_free_blocks) * kv.block_size
                if allocated:
                    stored = sum(r.num_computed_tokens for r in getattr(scheduler, "running", ()))
                    ratios.append(stored / allocated)
                    if stored > peak[0]:
                        peak = (stored, allocated)
        usage = KVUsage(sum(ratios) / len(ratios), peak[0] / peak[1]) if ratios else None
        return Generation([finished[i] for i in ids], usage)

    def describe(self) -> dict[str, Any]:
        runner = self.llm.engine.core.runner
        backend = runner.model.ctx.attention_backend
        kv = self.llm.engine.core.scheduler.kv_cache
        return {"dtype": str(self.llm.engine.info.dtype).removeprefix("torch."),
                "attention_backend": getattr(backend, "name", type(backend).__name__),
                "kv_blocks": kv.num_blocks, "block_size": kv.block_size}

    def close(self) -> None:
        self.llm = None


@dataclass(eq=False)
class HFEngine:
    """HF transformers ``generate``: static batches, left-padded, the way HF users batch.

    Each batch runs to its longest request; only each request's own tokens are kept. EOS is
    removed from the generation config so greedy decoding runs on as Octavo's ``ignore_eos``.
    """

    name = "hf"

    model_name: str | None
    _: KW_ONLY
    batch_size: int
    dtype: str = "float32"
    device: str = "cpu"
    model: Any = field(default=None, init=False, repr=False)  # set by load()

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"HF batch size must be positive, got {self.batch_size}")

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from octavo.model_loader.loader import resolve_model_source

        source = resolve_model_source(self.model_name)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[self.dtype]
        self.model = AutoModelForCausalLM.from_pretrained(
            source.folder, dtype=dtype, **source.hf_kwargs).to(self.device).eval()
        config = self.model.generation_config
        config.eos_token_id = None
        config.pad_token_id = 0
        config.do_sample = False
        config.temperature = config.top_p = config.top_k = None

    def warmup(self, requests: list[BenchRequest]) -> None:
        self._batch([BenchRequest(requests[0].prompt_token_ids[:16], 4)])

    def generate(self, requests: list[BenchRequest], progress: bool) -> Generation:
        outputs, stored, slots, ratios = [], 0, 0, []
        with progress_bar(len(requests), "hf", progress) as bar:
            for lo in range(0, len(requests), self.batch_size):
                batch = requests[lo:lo + self.batch_size]
                outputs += self._batch(batch)
                width = max(r.prompt_len for r in batch) + max(r.output_len for r in batch)
                batch_stored = sum(r.total_len for r in batch)
                ratios.append(batch_stored / (width * len(batch)))
                stored += batch_stored
                slots += width * len(batch)
                bar.update(len(batch))
        # The padded cache of each batch holds every row at the batch's full width.
        return Generation(outputs, KVUsage(sum(ratios) / len(ratios), stored / slots))

    def time_batch(self, batch: list[BenchRequest]) -> BatchTiming:
        """One padded batch, timed as a server that batches its requests with HF ``generate``
        would serve it: every request gets its first token with the batch's prefill and its
        last at the step of its own length, while the batch runs to its longest request."""
        import time

        from transformers import LogitsProcessor

        stamps: list[float] = []

        class Stamp(LogitsProcessor):  # runs once per generated token, after the forward
            def __call__(self, input_ids, scores):
                stamps.append(time.perf_counter())
                return scores

        start = time.perf_counter()
        self._batch(batch, logits_processor=[Stamp()])
        return BatchTiming.from_token_stamps(start, stamps, [r.output_len for r in batch])

    def _batch(self, batch: list[BenchRequest], **generate_kwargs) -> list[list[int]]:
        import torch

        width = max(r.prompt_len for r in batch)
        new = max(r.output_len for r in batch)
        ids = torch.tensor([[0] * (width - r.prompt_len) + list(r.prompt_token_ids)
                            for r in batch], device=self.device)
        mask = torch.tensor([[0] * (width - r.prompt_len) + [1] * r.prompt_len for r in batch],
                            device=self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                                      min_new_tokens=new, **generate_kwargs)
        return [row[width:width + r.output_len] for row, r in zip(out.tolist(), batch)]

    def describe(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "dtype": self.dtype}

    def close(self) -> None:
        self.model = None
