"""Statistics and serving metrics on known synthetic traces."""

from __future__ import annotations

import math

import pytest

from octavo_bench.serve_client import RequestRecord, arrival_offsets
from octavo_bench.serve_metrics import serve_metrics
from octavo_bench.stats import summarize
from octavo_bench.timing import BatchTiming, request_latencies


def test_summarize_matches_linear_interpolation_percentiles():
    s = summarize([float(v) for v in range(1, 101)])  # 1..100
    assert (s.count, s.mean, s.min, s.max) == (100, 50.5, 1.0, 100.0)
    # rank (n - 1) * q: p50 between 50 and 51, p90 at 90.1, p99 at 99.01
    assert s.p50 == pytest.approx(50.5)
    assert s.p90 == pytest.approx(90.1)
    assert s.p99 == pytest.approx(99.01)
    assert summarize([]) is None
    assert summarize([2.0]).scaled(1000).as_dict() == {
        "count": 1, "mean": 2000.0, "p50": 2000.0, "p90": 2000.0, "p99": 2000.0,
        "min": 2000.0, "max": 2000.0}


def trace() -> list[RequestRecord]:
    """Three requests sent at 10 s: two streamed, one failed."""
    a = RequestRecord(prompt_len=4, max_tokens=3, sent=10.0,
                      chunk_times=[10.1, 10.3, 10.6], finished=10.7)
    b = RequestRecord(prompt_len=6, max_tokens=2, sent=10.0,
                      chunk_times=[10.5, 10.6], usage_tokens=4, finished=11.0)
    failed = RequestRecord(prompt_len=5, max_tokens=3, sent=10.0, finished=10.2,
                           error="HTTP 500: boom")
    return [a, b, failed]


def test_serve_metrics_on_a_known_trace():
    m = serve_metrics(trace(), duration=2.0)
    assert (m["num_requests"], m["completed"], m["failed"]) == (3, 2, 1)
    assert m["errors"] == {"HTTP 500: boom": 1}
    # b's usage says 4 tokens (the server packed tokens into chunks); a counts its 3 chunks
    assert m["output_tokens"] == 7
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["output_token_throughput"] == pytest.approx(3.5)
    assert m["total_token_throughput"] == pytest.approx((7 + 4 + 6) / 2)
    assert m["short_outputs"] == 0
    ttft, e2e, itl, tpot = (m[k] for k in ("ttft_ms", "e2e_ms", "itl_ms", "tpot_ms"))
    assert ttft["count"] == 2 and ttft["mean"] == pytest.approx(300.0)  # 100 and 500 ms
    assert ttft["p50"] == pytest.approx(300.0) and ttft["max"] == pytest.approx(500.0)
    assert e2e["mean"] == pytest.approx(850.0)  # 700 and 1000 ms
    # gaps: a 200, 300; b 100 ms
    assert itl["count"] == 3 and itl["mean"] == pytest.approx(200.0)
    assert itl["p50"] == pytest.approx(200.0)
    # a: (10.7 - 10.1) / 2 = 300 ms; b: (11.0 - 10.5) / 3 = 166.7 ms
    assert tpot["count"] == 2 and tpot["mean"] == pytest.approx((300 + 500 / 3) / 2)


def test_serve_metrics_when_every_request_fails():
    m = serve_metrics([trace()[2]], duration=1.0)
    assert m["completed"] == 0 and m["failed"] == 1
    assert m["ttft_ms"] is None and m["output_token_throughput"] == 0.0


def test_poisson_arrivals_are_seeded_with_the_asked_rate():
    offsets = arrival_offsets(4000, rate=8.0, seed=3)
    assert offsets == arrival_offsets(4000, rate=8.0, seed=3)
    assert offsets != arrival_offsets(4000, rate=8.0, seed=4)
    assert offsets[0] == 0.0 and all(b >= a for a, b in zip(offsets, offsets[1:]))
    mean_gap = offsets[-1] / (len(offsets) - 1)
    assert mean_gap == pytest.approx(1 / 8.0, rel=0.06)
    assert arrival_offsets(3, rate=math.inf, seed=0) == [0.0, 0.0, 0.0]


def test_request_latencies_of_a_padded_batch():
    """HF's padded batch: every row gets a token at every stamp; each request ends at its own
    length, though the batch runs on to the longest."""
    stamps = [10.5, 10.6, 10.8, 10.9, 11.0]  # the batch started at 10.0
    timing = BatchTiming.from_token_stamps(10.0, stamps, [5, 3, 1])
    assert timing.prefill == pytest.approx(0.5)
    assert timing.decode_steps == pytest.approx([0.1, 0.2, 0.1, 0.1])
    assert timing.first_token == pytest.approx([0.5, 0.5, 0.5])
    assert timing.last_token == pytest.approx([1.0, 0.8, 0.5])
    ttft, tpot = request_latencies(timing, [5, 3, 1])
    assert ttft == pytest.approx([0.5, 0.5, 0.5])
    assert tpot == pytest.approx([0.5 / 4, 0.3 / 2])  # the one-token request has no TPOT
    with pytest.raises(ValueError, match="stamps"):
        BatchTiming.from_token_stamps(10.0, stamps[:2], [3])


def test_request_latencies_of_requests_that_finish_apart():
    timing = BatchTiming(0.4, [0.1, 0.1], first_token=[0.2, 0.4], last_token=[0.6, 0.4])
    assert request_latencies(timing, [3, 1]) == (pytest.approx([0.2, 0.4]),
                                                 pytest.approx([0.2]))
