"""``octavo bench latency``: one batch, its prefill time and the time of each decode step.

Prefill time runs from the first step until every request of the batch has its first token
(one step when the batch's prompts fit the token budget, several when chunked); every later
step is a decode step, one new token per request.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from octavo.bench.machine import LoadWindow, machine_info
from octavo.bench.report import format_machine, format_table
from octavo.bench.stats import summarize
from octavo.bench.workload import BenchRequest


def time_batch(engine, requests: list[BenchRequest]) -> tuple[float, list[float]]:
    """(prefill seconds, decode step seconds) of one pass of ``requests`` through ``engine``
    (an ``LLMEngine`` with nothing else in flight)."""
    from octavo.sampling_params import SamplingParams

    if engine.has_unfinished_requests():
        raise RuntimeError("the engine has requests in flight; latency needs it idle")
    waiting_first = set()
    for request in requests:
        request_id = engine.next_request_id()
        engine.add_request(request_id, list(request.prompt_token_ids),
                           SamplingParams(temperature=0, max_tokens=request.output_len,
                                          ignore_eos=True))
        waiting_first.add(request_id)
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


def run_latency(engine, requests: list[BenchRequest], *, num_iters: int, num_warmup: int,
                workload: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    if num_iters <= 0 or num_warmup < 0:
        raise ValueError(f"need num_iters > 0 and num_warmup >= 0, got {num_iters}, {num_warmup}")
    for _ in range(num_warmup):
        time_batch(engine, requests)
    window = LoadWindow()
    prefills, steps = [], []
    for _ in tqdm(range(num_iters), desc="latency", unit="batch", disable=not progress,
                  leave=False):
        prefill, decode_steps = time_batch(engine, requests)
        prefills.append(prefill)
        steps += decode_steps
    window.close()
    batch = len(requests)
    step_summary = summarize(steps)
    prefill_summary = summarize(prefills)
    return {
        "benchmark": "latency", "workload": workload,
        "machine": {**machine_info(), "load_before": window.load_before,
                    "load_after": window.load_after},
        "batch_size": batch, "num_iters": num_iters,
        "prefill_ms": prefill_summary.scaled(1e3).as_dict(),
        "prefill_tokens_per_s": sum(r.prompt_len for r in requests) / prefill_summary.mean,
        "decode_step_ms": step_summary.scaled(1e3).as_dict() if step_summary else None,
        "decode_tokens_per_s": batch / step_summary.mean if step_summary else None,
    }


def format_latency(report: dict[str, Any]) -> str:
    w = report["workload"]
    rows = [("prefill (whole batch)", *_stats(report["prefill_ms"]))]
    if report["decode_step_ms"]:
        rows.append(("decode step", *_stats(report["decode_step_ms"])))
    lines = [f"batch={report['batch_size']} input_len={w['input_len']} "
             f"output_len={w['output_len']} iterations={report['num_iters']} model={w['model']}",
             format_machine(report["machine"]), "",
             format_table(("ms", "mean", "p50", "p90", "p99"), rows), "",
             f"prefill {report['prefill_tokens_per_s']:.1f} prompt tok/s"]
    if report["decode_tokens_per_s"]:
        lines[-1] += f"; decode {report['decode_tokens_per_s']:.1f} tok/s"
    return "\n".join(lines)


def _stats(summary: dict[str, float]) -> tuple[float, ...]:
    return tuple(summary[k] for k in ("mean", "p50", "p90", "p99"))
