"""``octavo bench interference``: short requests arriving while a long prompt is prefilled."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from octavo import LLM
from octavo.cli import cli
from octavo.testing.tiny_models import save_tiny_model
from octavo_bench.interference import run_interference


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny_model(path, "llama", max_position_embeddings=512)
    return path


@pytest.mark.parametrize("threshold", [None, 16])
def test_with_a_threshold_short_requests_get_a_token_in_the_next_step(folder, threshold):
    llm = LLM(str(folder), device="cpu", block_size=4, max_num_batched_tokens=32,
              long_prefill_token_threshold=threshold)
    result = run_interference(llm.engine, long_len=300, short_len=5, num_short=2,
                              vocab_size=100)
    assert len(result.short_ttft_s) == 2 and result.total_s >= result.long_ttft_s > 0
    assert not llm.engine.has_unfinished_requests()
    # 300 prompt tokens at 32 a step: the long prompt's other 268 take 9 more steps, and
    # without a threshold the short requests get in only in the last (12 tokens + 2 x 5).
    assert result.short_wait_steps == (1 if threshold else 9)


def test_interference_command_compares_thresholds(folder, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, [
        "bench", "interference", "-m", str(folder), "--device", "cpu", "--block-size", "4",
        "--max-num-batched-tokens", "32", "--long-len", "200", "--short-len", "4",
        "--num-short", "2", "--thresholds", "none,8", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["long_prefill_token_threshold"] for r in report["results"]] == [None, 8]
    # "none" really is the whole budget (not the default threshold): the short ones wait
    assert [r["short_wait_steps"] for r in report["results"]] == [6, 1]
    for row in report["results"]:
        assert 0 < row["short_ttft_p50_s"] <= row["short_ttft_max_s"] <= row["total_s"]
    assert report["machine"]["cpu"] and "cpu_capability" in report["machine"]
