"""``octavo bench models``: cold, warm and after-swap TTFT; one model against two."""

from __future__ import annotations

import json

from click.testing import CliRunner

from octavo.cli import cli
from octavo.testing.tiny_models import save_tiny_model


def test_models_command_reports_every_measurement(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_tiny_model(a, "llama", seed=0)
    save_tiny_model(b, "qwen2", seed=1)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, [
        "bench", "models", "-m", str(a), "--model-b", str(b), "-n", "4", "--input-len", "8",
        "--output-len", "6", "--device", "cpu", "--block-size", "4",
        "--num-gpu-blocks-override", "128", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "TTFT cold (lazy load)" in result.output and "two models" in result.output
    report = json.loads(out.read_text())
    results = report["results"]
    assert report["models"] == {"a": str(a), "b": str(b), "swap_to": str(a)}
    for key in ("ttft_cold_s", "ttft_warm_median_s", "swap_s", "ttft_after_swap_s"):
        assert results[key] > 0
    assert results["ttft_cold_s"] > results["ttft_warm_median_s"]  # the load is in it
    for run in ("one_model", "two_models"):
        assert results[run]["requests"] == 4 and results[run]["output_tokens"] == 4 * 6
