"""Serving metrics from per-request stream records (vLLM's definitions).

- TTFT: time to first token, from sending the request to its first content chunk.
- ITL: inter-token latency, the gaps between successive content chunks.
- TPOT: time per output token after the first, ``(e2e - ttft) / (output_tokens - 1)``.
- E2E: from sending the request to the end of its stream.
Throughputs count the completed requests over the wall time of the whole run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from octavo_bench.serve_client import RequestRecord
from octavo_bench.stats import summarize


def serve_metrics(records: list[RequestRecord], duration: float) -> dict[str, Any]:
    """Latency summaries (milliseconds), throughputs and errors of one serving run."""
    done = [r for r in records if r.ok]
    ttft = [r.chunk_times[0] - r.sent for r in done if r.chunk_times]
    e2e = [r.finished - r.sent for r in done]
    itl = [b - a for r in done for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    tpot = [(r.finished - r.chunk_times[0]) / (r.output_tokens - 1)
            for r in done if r.chunk_times and r.output_tokens > 1]
    output_tokens = sum(r.output_tokens for r in done)
    errors = Counter(r.error for r in records if not r.ok)

    def ms(values: list[float]) -> dict[str, float] | None:
        summary = summarize(values)
        return summary.scaled(1e3).as_dict() if summary else None

    return {
        "num_requests": len(records), "completed": len(done), "failed": len(records) - len(done),
        "duration_s": duration,
        "request_throughput": len(done) / duration,
        "output_token_throughput": output_tokens / duration,
        "total_token_throughput": (output_tokens + sum(r.prompt_len for r in done)) / duration,
        "output_tokens": output_tokens,
        "short_outputs": sum(r.output_tokens < r.max_tokens for r in done),
        "ttft_ms": ms(ttft), "tpot_ms": ms(tpot), "itl_ms": ms(itl), "e2e_ms": ms(e2e),
        "errors": dict(errors.most_common(10)),
    }
