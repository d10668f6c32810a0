"""``octavo bench throughput``: offline generation of a whole workload, Octavo beside peers.

All engines run on the same requests, one after the other (HF and llama.cpp in this process,
vLLM in a subprocess of its own Python), so a change in the machine's load shows in every
engine's figures; the report ends with Octavo's ratios. Beside its speed, each engine's CPU
use is reported: process CPU time over wall time of its timed run (2.0: two cores busy).
"""

from __future__ import annotations

from typing import Any

from octavo_bench.engines import Engine, EngineRun, measure
from octavo_bench.machine import MiB, machine_info
from octavo_bench.report import format_machine, format_table
from octavo_bench.workload import BenchRequest, workload_totals


def run_throughput(engines: list[Engine], requests: list[BenchRequest], *,
                   workload: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Measure each engine on ``requests`` (the first is the one the ratios describe)."""
    totals = workload_totals(requests)
    runs = [measure(engine, requests, progress=progress) for engine in engines]
    results = [engine_result(run, totals) for run in runs]
    report: dict[str, Any] = {
        "benchmark": "throughput", "workload": {**workload, **totals},
        "machine": {**machine_info(), "load_before": runs[0].load_before,
                    "load_after": runs[-1].load_after},
        "engines": results,
    }
    base = runs[0]
    report["ratios"] = [ratio(base, results[0], run, result)
                        for run, result in zip(runs[1:], results[1:])]
    return report


def engine_result(run: EngineRun, totals: dict[str, int]) -> dict[str, Any]:
    return {
        "engine": run.engine, "seconds": run.seconds, "load_seconds": run.load_seconds,
        "requests_per_s": totals["num_requests"] / run.seconds,
        "output_tokens_per_s": totals["output_tokens"] / run.seconds,
        "total_tokens_per_s": totals["total_tokens"] / run.seconds,
        "peak_rss_mib": run.peak_rss_bytes / MiB if run.peak_rss_bytes else None,
        "cpu_seconds": run.cpu_seconds,
        "cpu_util": run.cpu_seconds / run.seconds if run.cpu_seconds is not None else None,
        "kv_util_mean": run.kv_usage.mean if run.kv_usage else None,
        "kv_util_peak": run.kv_usage.peak if run.kv_usage else None,
        "load_before": run.load_before, "load_after": run.load_after,
        "details": run.details,
    }


def ratio(base: EngineRun, base_result: dict[str, Any], peer: EngineRun,
          peer_result: dict[str, Any]) -> dict[str, Any]:
    """How many times faster the base engine ran than ``peer``, and how often they agree."""
    same = sum(a == b for a, b in zip(base.token_ids, peer.token_ids))
    return {"engine": base.engine, "peer": peer.engine,
            "speedup": base_result["output_tokens_per_s"] / peer_result["output_tokens_per_s"],
            "identical_outputs": same, "num_requests": len(base.token_ids)}


def format_throughput(report: dict[str, Any]) -> str:
    w = report["workload"]
    lines = [f"workload={w['name']} requests={w['num_requests']} seed={w['seed']} "
             f"prompt_tokens={w['prompt_tokens']} output_tokens={w['output_tokens']} "
             f"model={w['model']}",
             format_machine(report["machine"]), ""]
    rows = [(r["engine"], r["seconds"], r["requests_per_s"], r["output_tokens_per_s"],
             r["total_tokens_per_s"], r["load_seconds"], r["cpu_util"], r["peak_rss_mib"],
             _percent(r["kv_util_mean"]), _percent(r["kv_util_peak"]),
             f"{r['load_before']:.2f}->{r['load_after']:.2f}")
            for r in report["engines"]]
    lines.append(format_table(("engine", "seconds", "req/s", "out tok/s", "total tok/s",
                               "start-up s", "CPU cores", "peak RSS MiB", "KV util mean",
                               "KV util peak", "load"), rows))
    for r in report["ratios"]:
        lines.append(f"{r['engine']} / {r['peer']}: {r['speedup']:.2f}x output tokens/s; "
                     f"greedy outputs identical for {r['identical_outputs']}/"
                     f"{r['num_requests']} requests")
    lines += [f"{r['engine']} settings: {_settings(r['details'])}" for r in report["engines"]
              if r["details"]]
    return "\n".join(lines)


def _settings(details: dict[str, Any], prefix: str = "") -> str:
    """``key=value`` pairs, nested dictionaries flattened (``llm.dtype=float32``)."""
    return " ".join(_settings(value, f"{prefix}{key}.") if isinstance(value, dict)
                    else f"{prefix}{key}={value}"
                    for key, value in details.items() if value is not None)


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value:.1%}"
