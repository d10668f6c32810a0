"""``octavo bench serve`` against a fake OpenAI-style server with known timings and faults."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from click.testing import CliRunner

from octavo.cli import cli
from octavo_bench.serve_client import ServeOptions, run_requests
from octavo_bench.serve_metrics import serve_metrics
from octavo_bench.workload import make_workload

SLACK_MS = 250  # scheduling noise allowed on a loaded 2-core machine


def run(server, requests, **options):
    opts = ServeOptions(base_url=server.base_url, model="fake-model", **options)
    prompts = [list(r.prompt_token_ids) for r in requests]
    return asyncio.run(run_requests(opts, prompts, requests))


def test_timings_match_the_server_schedule(fake_server):
    server = fake_server(ttft=0.05, itl=0.02)
    requests = make_workload("random", 4, vocab_size=100, input_len=3, output_len=5)
    records, duration = run(server, requests, max_concurrency=2)
    m = serve_metrics(records, duration)
    assert (m["completed"], m["failed"], m["output_tokens"]) == (4, 0, 20)
    assert server.max_in_flight == 2  # the concurrency limit held
    assert m["ttft_ms"]["min"] >= 50 and m["ttft_ms"]["p50"] < 50 + SLACK_MS
    assert 20 * 0.8 <= m["itl_ms"]["p50"] < 20 + SLACK_MS
    assert 20 * 0.8 <= m["tpot_ms"]["mean"] < 20 + SLACK_MS
    assert m["e2e_ms"]["min"] >= 50 + 4 * 20 * 0.8
    # two waves of two requests, each at least 130 ms
    assert duration >= 2 * (0.05 + 4 * 0.02) * 0.8
    body = server.bodies[0]
    assert body["stream"] is True and body["ignore_eos"] is True
    assert body["max_tokens"] == body["min_tokens"] == 5
    assert body["prompt"] in [list(r.prompt_token_ids) for r in requests]


def test_poisson_rate_spaces_the_requests(fake_server):
    server = fake_server(ttft=0.0, itl=0.0)
    requests = make_workload("random", 6, vocab_size=100, input_len=2, output_len=1)
    start = time.perf_counter()
    records, _ = run(server, requests, request_rate=20.0, seed=1)
    sends = [r.sent - start for r in records]
    from octavo_bench.serve_client import arrival_offsets

    for sent, offset in zip(sends, arrival_offsets(6, 20.0, 1)):
        assert offset <= sent < offset + SLACK_MS / 1000


def test_a_failing_server_is_reported_not_hung(fake_server):
    server = fake_server(ttft=0.01, itl=0.01,
                         modes=("ok", "http500", "drop", "error_event", "hang"))
    requests = make_workload("random", 5, vocab_size=100, input_len=2, output_len=3)
    start = time.perf_counter()
    records, duration = run(server, requests, max_concurrency=1, request_timeout=1.0)
    assert time.perf_counter() - start < 10
    m = serve_metrics(records, duration)
    assert (m["completed"], m["failed"]) == (1, 4)
    assert set(m["errors"]) == {"HTTP 500: boom", "the stream ended before [DONE]",
                                "error event: model crashed", "timed out after 1 s"}


def test_unreachable_server_is_an_error_per_request():
    requests = make_workload("random", 2, vocab_size=100, input_len=2, output_len=3)
    opts = ServeOptions(base_url="http://127.0.0.1:9", model="m", request_timeout=5)
    records, duration = asyncio.run(run_requests(opts, [[1, 2], [3, 4]], requests))
    assert all(r.error and r.error.startswith("ConnectError") for r in records)


def test_serve_command_end_to_end(fake_server, tmp_path):
    server = fake_server(ttft=0.01, itl=0.005)
    out = tmp_path / "serve.json"
    result = CliRunner().invoke(cli, [
        "bench", "serve", "--base-url", server.base_url, "--vocab-size", "500",
        "-n", "6", "--input-len", "4", "--output-len", "3", "--max-concurrency", "1",
        "--max-concurrency", "3", "--label", "fake", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "TTFT" in result.output and "fake at" in result.output
    report = json.loads(out.read_text())
    assert report["served_model"] == "fake-model"  # read from /v1/models
    assert [r["max_concurrency"] for r in report["runs"]] == [1, 3]
    assert all(r["completed"] == 6 and r["output_tokens"] == 18 for r in report["runs"])
    assert server.max_in_flight == 3
    assert {"load_before", "load_after"} <= set(report["runs"][0])
    assert report["machine"]["cpu_count"] >= 1


def test_serve_command_chat_endpoint_and_exit_status_on_errors(fake_server):
    server = fake_server(ttft=0.0, itl=0.0, modes=("ok", "http500"))
    result = CliRunner().invoke(cli, [
        "bench", "serve", "--base-url", server.base_url, "--served-model", "x",
        "--vocab-size", "50", "-n", "4", "--input-len", "2", "--output-len", "2",
        "--endpoint", "/v1/chat/completions", "--no-progress", "--json"])
    assert result.exit_code == 2, result.output  # usage error: chat needs text prompts
    assert "text prompts" in result.output
    result = CliRunner().invoke(cli, [
        "bench", "serve", "--base-url", server.base_url, "--served-model", "x",
        "--vocab-size", "50", "-n", "4", "--input-len", "2", "--output-len", "2",
        "--no-progress", "--json"])
    assert result.exit_code == 1
    run = json.loads(result.output)["runs"][0]
    assert (run["completed"], run["failed"]) == (2, 2)
    assert run["errors"] == {"HTTP 500: boom": 2}


@pytest.mark.parametrize("args, message", [
    (["--request-rate", "0"], "request rate must be positive"),
    (["--max-concurrency", "0"], "--max-concurrency must be positive"),
    (["--extra-body", "[1]"], "--extra-body must be a JSON object"),
    (["--extra-body", "{"], "--extra-body is not JSON"),
])
def test_serve_command_rejects_bad_options(args, message):
    result = CliRunner().invoke(cli, ["bench", "serve", "--served-model", "x",
                                      "--vocab-size", "50", "-n", "1", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_plot_of_serve_reports(fake_server, tmp_path):
    pytest.importorskip("matplotlib")
    server = fake_server(ttft=0.0, itl=0.001)
    report = tmp_path / "fake.json"
    CliRunner().invoke(cli, ["bench", "serve", "--base-url", server.base_url, "--vocab-size",
                             "50", "-n", "4", "--input-len", "2", "--output-len", "3",
                             "--max-concurrency", "1", "--max-concurrency", "4",
                             "--no-progress", "-o", str(report)])
    png = tmp_path / "plot.png"
    result = CliRunner().invoke(cli, ["bench", "plot", str(report), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmark": "throughput"}))
    result = CliRunner().invoke(cli, ["bench", "plot", str(bad), "-o", str(png)])
    assert result.exit_code == 2 and "not a `bench serve` report" in result.output


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # absent, installed or not
    report = tmp_path / "report.json"
    report.write_text("{}")
    result = CliRunner().invoke(cli, ["bench", "plot", str(report), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 1, result.output
    assert "plotting needs matplotlib: pip install 'octavo-bench[plot]'" in result.output
    assert not (tmp_path / "p.png").exists()
