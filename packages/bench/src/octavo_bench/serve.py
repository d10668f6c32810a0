"""``octavo bench serve``: drive an OpenAI-compatible server and report its latencies."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

from tqdm.auto import tqdm

from octavo_bench.machine import LoadWindow, machine_info
from octavo_bench.report import format_machine, format_table
from octavo_bench.serve_client import ServeOptions, run_requests
from octavo_bench.serve_metrics import serve_metrics
from octavo_bench.workload import BenchRequest


def run_serve(options: ServeOptions, requests: list[BenchRequest],
              prompts: list[str | list[int]], *, concurrencies: list[int | None],
              workload: dict[str, Any], label: str, progress: bool = True) -> dict[str, Any]:
    """One run of the whole workload per concurrency limit (None: unlimited)."""
    runs = []
    for concurrency in concurrencies:
        run_options = replace(options, max_concurrency=concurrency)
        window = LoadWindow()
        with tqdm(total=len(requests), desc=f"serve c={concurrency or 'inf'}", unit="req",
                  disable=not progress, leave=False) as bar:
            records, duration = asyncio.run(run_requests(
                run_options, prompts, requests, on_done=lambda _: bar.update(1)))
        window.close()
        runs.append({"max_concurrency": concurrency,
                     "request_rate": None if math.isinf(options.request_rate)
                     else options.request_rate,
                     "load_before": window.load_before, "load_after": window.load_after,
                     **serve_metrics(records, duration)})
    return {"benchmark": "serve", "label": label, "base_url": options.base_url,
            "served_model": options.model, "endpoint": options.endpoint,
            "workload": workload, "machine": machine_info(), "runs": runs}


def format_serve(report: dict[str, Any]) -> str:
    w = report["workload"]
    lines = [f"{report['label']} at {report['base_url']}{report['endpoint']} "
             f"model={report['served_model']} workload={w['name']} requests={w['num_requests']} "
             f"seed={w['seed']}", format_machine(report["machine"]), ""]
    rows = []
    for run in report["runs"]:
        rows.append((run["max_concurrency"] or "inf", run["request_rate"] or "inf",
                     run["completed"], run["failed"], run["short_outputs"],
                     run["request_throughput"],
                     run["output_token_throughput"], *_p(run["ttft_ms"]), *_p(run["tpot_ms"]),
                     *_p(run["itl_ms"]), *_p(run["e2e_ms"]),
                     f"{run['load_before']:.2f}->{run['load_after']:.2f}"))
    lines.append(format_table(
        ("concurrency", "rate", "ok", "failed", "short", "req/s", "out tok/s",
         "TTFT mean", "p50", "p90", "p99", "TPOT mean", "p50", "p90", "p99",
         "ITL mean", "p50", "p90", "p99", "E2E mean", "p50", "p90", "p99", "load"), rows))
    lines.append("(latencies in ms; short: completed with fewer tokens than asked)")
    for run in report["runs"]:
        for message, count in run["errors"].items():
            lines.append(f"concurrency {run['max_concurrency'] or 'inf'}: {count} x {message}")
    return "\n".join(lines)


def _p(summary: dict[str, float] | None) -> tuple[float | None, ...]:
    keys = ("mean", "p50", "p90", "p99")
    return tuple(summary[k] for k in keys) if summary else (None,) * len(keys)
