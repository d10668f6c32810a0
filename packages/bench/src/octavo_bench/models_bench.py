"""``octavo bench models``: what serving several models costs.

Core's ``ModelManager`` in process (no HTTP), with two lazily loaded models, ``a`` and ``b``:

- time to first token of ``a``'s first request (a cold model: the load is in it), of the
  next ones (warm), and of the first request after ``a`` is hot-swapped to a new checkpoint;
- output tokens/s of a batch of concurrent requests to ``a`` alone, then of the same number
  of requests split between ``a`` and ``b`` (two engines sharing the CPU).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

from octavo.entrypoints.model_manager import ModelManager, ModelSpec
from octavo.sampling_params import SamplingParams


@dataclass
class ModelsBenchOptions:
    model_a: str
    model_b: str
    swap_to: str
    engine: dict
    prompts: list[list[int]]  # one per request of the throughput runs; the first for TTFT
    output_len: int
    warm_requests: int = 5


async def _request(manager: ModelManager, model: str, prompt: list[int],
                   max_tokens: int) -> tuple[float, int]:
    """(seconds to the first token, tokens) of one greedy request, its lease included."""
    start = time.perf_counter()
    first = None
    tokens = 0
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    async with await manager.acquire(model) as lease:
        async for output in lease.llm.generate({"prompt_token_ids": prompt}, params):
            if first is None and output.outputs[0].token_ids:
                first = time.perf_counter() - start
            tokens = len(output.outputs[0].token_ids)
    return first or 0.0, tokens


async def _throughput(manager: ModelManager, jobs: list[tuple[str, list[int]]],
                      max_tokens: int) -> dict:
    start = time.perf_counter()
    results = await asyncio.gather(*(_request(manager, model, prompt, max_tokens)
                                     for model, prompt in jobs))
    seconds = time.perf_counter() - start
    tokens = sum(t for _, t in results)
    return {"requests": len(jobs), "seconds": seconds, "output_tokens": tokens,
            "output_tokens_per_s": tokens / seconds,
            "median_ttft_s": statistics.median(ttft for ttft, _ in results)}


async def _ttfts(manager: ModelManager, prompt: list[int], n: int, times: int) -> list[float]:
    return [(await _request(manager, "a", prompt, n))[0] for _ in range(times)]


async def _measure(options: ModelsBenchOptions) -> dict:
    manager = ModelManager([ModelSpec("a", options.model_a, dict(options.engine)),
                            ModelSpec("b", options.model_b, dict(options.engine))])
    prompt, n, warm = options.prompts[0], options.output_len, options.warm_requests
    try:
        cold, _ = await _request(manager, "a", prompt, n)
        warm_ttfts = await _ttfts(manager, prompt, n, warm)
        start = time.perf_counter()
        await manager.swap("a", options.swap_to)
        swap_seconds = time.perf_counter() - start
        after_swap = await _ttfts(manager, prompt, n, warm + 1)
        await manager.load("b")  # loaded before the two-model run is timed
        one = await _throughput(manager, [("a", p) for p in options.prompts], n)
        two = await _throughput(manager, [("ab"[i % 2], p)
                                          for i, p in enumerate(options.prompts)], n)
    finally:
        await manager.shutdown()
    return {"ttft_cold_s": cold, "ttft_warm_median_s": statistics.median(warm_ttfts),
            "swap_s": swap_seconds, "ttft_after_swap_s": after_swap[0],
            "ttft_after_swap_warm_median_s": statistics.median(after_swap[1:]),
            "one_model": one, "two_models": two}


def run_models_bench(options: ModelsBenchOptions) -> dict:
    from octavo_bench.machine import load_average, machine_info

    load_before = load_average()
    results = asyncio.run(_measure(options))
    return {"bench": "models", "models": {"a": options.model_a, "b": options.model_b,
                                          "swap_to": options.swap_to},
            "engine": options.engine, "requests": len(options.prompts),
            "output_len": options.output_len, "results": results,
            "load_average": {"before": load_before, "after": load_average()},
            "machine": machine_info()}


def format_models_bench(report: dict) -> str:
    r = report["results"]
    one, two = r["one_model"], r["two_models"]
    lines = [
        f"TTFT cold (lazy load)        {r['ttft_cold_s']:8.3f} s",
        f"TTFT warm (median)           {r['ttft_warm_median_s']:8.3f} s",
        f"swap (load the new engine)   {r['swap_s']:8.3f} s",
        f"TTFT first after swap        {r['ttft_after_swap_s']:8.3f} s",
        f"TTFT after swap (median)     {r['ttft_after_swap_warm_median_s']:8.3f} s",
        f"one model:  {one['requests']} requests  {one['output_tokens_per_s']:7.1f} tok/s  "
        f"median TTFT {one['median_ttft_s']:.3f} s",
        f"two models: {two['requests']} requests  {two['output_tokens_per_s']:7.1f} tok/s  "
        f"median TTFT {two['median_ttft_s']:.3f} s",
        f"load average {report['load_average']['before']:.1f} -> "
        f"{report['load_average']['after']:.1f}; {report['machine']['cpu']}",
    ]
    return "\n".join(lines)
