"""``octavo bench latency``: one batch, its prefill, its decode steps, each request's TTFT/TPOT.

In a server that batches its requests, these are the time to first token and the time per
output token of a batch of that many concurrent requests. ``--compare hf`` times HF
``generate`` on the same padded batch, the way an HF-based server would run it; with
``--workload chat`` the requests have mixed lengths, so HF pads every prompt to the longest
and runs every row to the longest output.

Prefill time runs from the first step until every request of the batch has its first token
(one step when the batch's prompts fit the token budget, several when chunked); every later
step is a decode step. Per request, TTFT is the time of its first token from the pass start,
and TPOT ``(last - first) / (output_len - 1)``. Each pass starts from an empty prefix cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from octavo_bench.engines import add_bench_requests
from octavo_bench.machine import LoadWindow, machine_info
from octavo_bench.report import format_machine, format_table
from octavo_bench.stats import Summary, summarize
from octavo_bench.timing import BatchTiming, request_latencies
from octavo_bench.workload import BenchRequest


def time_batch(engine, requests: list[BenchRequest]) -> BatchTiming:
    """One pass of ``requests`` through ``engine`` (an ``LLMEngine`` with nothing else in
    flight). The prefix cache is reset first, so the pass computes every prompt instead of
    finding it cached by an earlier pass."""
    if engine.has_unfinished_requests():
        raise RuntimeError("the engine has requests in flight; latency needs it idle")
    engine.reset_prefix_cache()
    index = {request_id: i for i, request_id in enumerate(add_bench_requests(engine, requests))}
    first: list[float | None] = [None] * len(requests)
    last: list[float | None] = [None] * len(requests)
    prefill, steps = None, []
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        step_start = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        for output in outputs:
            i = index[output.request_id]
            if first[i] is None and output.outputs[0].token_ids:
                first[i] = now - start
            if output.finished:
                last[i] = now - start
        if prefill is None:
            if None not in first:
                prefill = now - start
        else:
            steps.append(now - step_start)
    return BatchTiming(prefill, steps, first, last)


BatchTimer = Callable[[list[BenchRequest]], BatchTiming]


def run_latency(timers: dict[str, BatchTimer], requests: list[BenchRequest], *, num_iters: int,
                num_warmup: int, workload: dict[str, Any], progress: bool = True
                ) -> dict[str, Any]:
    """Time the batch ``num_iters`` times with each engine's timer (the first is the one the
    ratios describe), after ``num_warmup`` untimed passes."""
    if num_iters <= 0 or num_warmup < 0:
        raise ValueError(f"need num_iters > 0 and num_warmup >= 0, got {num_iters}, {num_warmup}")
    window = LoadWindow()
    engines = []
    for name, timer in timers.items():
        for _ in range(num_warmup):
            timer(requests)
        timings = [timer(requests) for _ in tqdm(range(num_iters), desc=name, unit="batch",
                                                 disable=not progress, leave=False)]
        engines.append(_engine_latency(name, requests, timings))
    window.close()
    base = engines[0]
    return {
        "benchmark": "latency", "workload": workload,
        "machine": {**machine_info(), "load_before": window.load_before,
                    "load_after": window.load_after},
        "batch_size": len(requests), "num_iters": num_iters, "engines": engines,
        "ratios": [{"engine": base["engine"], "peer": peer["engine"],
                    **{f"{key}_speedup": _p50_ratio(base[f"{key}_ms"], peer[f"{key}_ms"])
                       for key in ("prefill", "decode_step", "ttft", "tpot")}}
                   for peer in engines[1:]],
    }


def _p50_ratio(base: dict[str, float] | None, peer: dict[str, float] | None) -> float | None:
    """How many times lower the base engine's p50 is than the peer's."""
    return peer["p50"] / base["p50"] if base and peer else None


def _engine_latency(name: str, requests: list[BenchRequest],
                    timings: list[BatchTiming]) -> dict[str, Any]:
    output_lens = [r.output_len for r in requests]
    steps, ttft, tpot = [], [], []
    for timing in timings:
        steps += timing.decode_steps
        request_ttft, request_tpot = request_latencies(timing, output_lens)
        ttft += request_ttft
        tpot += request_tpot
    step_summary = summarize(steps)
    prefill_summary = summarize([t.prefill for t in timings])
    return {
        "engine": name,
        "prefill_ms": prefill_summary.scaled(1e3).as_dict(),
        "prefill_tokens_per_s": sum(r.prompt_len for r in requests) / prefill_summary.mean,
        "decode_step_ms": _ms(step_summary),
        # tokens after each request's first, over the decode steps' time (padding not counted)
        "decode_tokens_per_s": (len(timings) * sum(n - 1 for n in output_lens) / sum(steps)
                                if steps else None),
        "ttft_ms": _ms(summarize(ttft)),
        "tpot_ms": _ms(summarize(tpot)),
    }


def _ms(summary: Summary | None) -> dict[str, float] | None:
    return summary.scaled(1e3).as_dict() if summary else None


ROWS = (("prefill", "prefill (whole batch)", "prefill_tokens_per_s"),
        ("decode_step", "decode step", "decode_tokens_per_s"),
        ("ttft", "TTFT (per request)", None), ("tpot", "TPOT (per request)", None))
RATIOS = (("prefill", "prefill"), ("decode_step", "decode step"), ("ttft", "TTFT"),
          ("tpot", "TPOT"))


def format_latency(report: dict[str, Any]) -> str:
    w = report["workload"]
    rows = [(f"{engine['engine']} {label}", *_stats(engine[f"{key}_ms"]),
             engine[rate] if rate else None)
            for engine in report["engines"] for key, label, rate in ROWS
            if engine.get(f"{key}_ms")]
    lines = [f"workload={w.get('name', 'random')} batch={report['batch_size']} "
             f"input_len={w['input_len']} output_len={w['output_len']} "
             f"iterations={report['num_iters']} model={w['model']}",
             format_machine(report["machine"]), "",
             format_table(("ms", "mean", "p50", "p90", "p99", "tok/s"), rows)]
    for r in report["ratios"]:
        figures = ", ".join(f"{label} {r[f'{key}_speedup']:.2f}x" for key, label in RATIOS
                            if r.get(f"{key}_speedup"))
        lines.append(f"{r['engine']} / {r['peer']} (p50): {figures}")
    return "\n".join(lines)


def _stats(summary: dict[str, float]) -> tuple[float, ...]:
    return tuple(summary[k] for k in ("mean", "p50", "p90", "p99"))
