"""``octavo bench latency``: one batch, its prefill time and the time of each decode step.

In a server that batches its requests, these are the time to first token and the time per
output token of a batch of that many concurrent requests. ``--compare hf`` times HF
``generate`` on the same padded batch, the way an HF-based server would run it.

Prefill time runs from the first step until every request of the batch has its first token
(one step when the batch's prompts fit the token budget, several when chunked); every later
step is a decode step, one new token per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from octavo.bench.engines import add_bench_requests
from octavo.bench.machine import LoadWindow, machine_info
from octavo.bench.report import format_machine, format_table
from octavo.bench.stats import summarize
from octavo.bench.workload import BenchRequest


def time_batch(engine, requests: list[BenchRequest]) -> tuple[float, list[float]]:
    """(prefill seconds, decode step seconds) of one pass of ``requests`` through ``engine``
    (an ``LLMEngine`` with nothing else in flight)."""
    if engine.has_unfinished_requests():
        raise RuntimeError("the engine has requests in flight; latency needs it idle")
    waiting_first = set(add_bench_requests(engine, requests))
    prefill, steps = None, []
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        step_start = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        if prefill is None:
            waiting_first.difference_update(o.request_id for o in outputs
                                            if o.outputs[0].token_ids)
            if not waiting_first:
                prefill = now - start
        else:
            steps.append(now - step_start)
    return prefill, steps


BatchTimer = Callable[[list[BenchRequest]], tuple[float, list[float]]]


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
        prefills, steps = [], []
        for _ in tqdm(range(num_iters), desc=name, unit="batch", disable=not progress,
                      leave=False):
            prefill, decode_steps = timer(requests)
            prefills.append(prefill)
            steps += decode_steps
        engines.append(_engine_latency(name, requests, prefills, steps))
    window.close()
    base = engines[0]
    return {
        "benchmark": "latency", "workload": workload,
        "machine": {**machine_info(), "load_before": window.load_before,
                    "load_after": window.load_after},
        "batch_size": len(requests), "num_iters": num_iters, "engines": engines,
        "ratios": [{"engine": base["engine"], "peer": peer["engine"],
                    "prefill_speedup": peer["prefill_ms"]["p50"] / base["prefill_ms"]["p50"],
                    "decode_step_speedup": (peer["decode_step_ms"]["p50"]
                                            / base["decode_step_ms"]["p50"])
                    if base["decode_step_ms"] and peer["decode_step_ms"] else None}
                   for peer in engines[1:]],
    }


def _engine_latency(name: str, requests: list[BenchRequest], prefills: list[float],
                    steps: list[float]) -> dict[str, Any]:
    step_summary = summarize(steps)
    prefill_summary = summarize(prefills)
    return {
        "engine": name,
        "prefill_ms": prefill_summary.scaled(1e3).as_dict(),
        "prefill_tokens_per_s": sum(r.prompt_len for r in requests) / prefill_summary.mean,
        "decode_step_ms": step_summary.scaled(1e3).as_dict() if step_summary else None,
        "decode_tokens_per_s": len(requests) / step_summary.mean if step_summary else None,
    }


def format_latency(report: dict[str, Any]) -> str:
    w = report["workload"]
    rows = []
    for engine in report["engines"]:
        rows.append((f"{engine['engine']} prefill (whole batch)", *_stats(engine["prefill_ms"]),
                     engine["prefill_tokens_per_s"]))
        if engine["decode_step_ms"]:
            rows.append((f"{engine['engine']} decode step", *_stats(engine["decode_step_ms"]),
                         engine["decode_tokens_per_s"]))
    lines = [f"batch={report['batch_size']} input_len={w['input_len']} "
             f"output_len={w['output_len']} iterations={report['num_iters']} model={w['model']}",
             format_machine(report["machine"]), "",
             format_table(("ms", "mean", "p50", "p90", "p99", "tok/s"), rows)]
    for r in report["ratios"]:
        decode = (f", decode step {r['decode_step_speedup']:.2f}x"
                  if r["decode_step_speedup"] else "")
        lines.append(f"{r['engine']} / {r['peer']} (p50): prefill {r['prefill_speedup']:.2f}x"
                     f"{decode}")
    return "\n".join(lines)


def _stats(summary: dict[str, float]) -> tuple[float, ...]:
    return tuple(summary[k] for k in ("mean", "p50", "p90", "p99"))
