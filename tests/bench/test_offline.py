"""``octavo bench throughput`` and ``octavo bench latency`` on a tiny model."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from octavo import LLM, SamplingParams
from octavo.bench.latency import time_batch
from octavo.bench.workload import make_workload
from octavo.cli import cli
from octavo.testing.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny_model(path, "llama")
    return path


def test_throughput_beside_hf(folder, tmp_path):
    out = tmp_path / "throughput.json"
    result = CliRunner().invoke(cli, [
        "bench", "throughput", "-m", str(folder), "--device", "cpu", "--block-size", "4",
        "-n", "6", "--input-len", "9", "--output-len", "7", "--compare", "hf",
        "--hf-batch-size", "4", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "octavo / hf:" in result.output and "identical for 6/6 requests" in result.output
    report = json.loads(out.read_text())
    assert report["workload"]["output_tokens"] == 42 and report["workload"]["prompt_tokens"] == 54
    octavo, hf = report["engines"]
    assert (octavo["engine"], hf["engine"]) == ("octavo", "hf")
    for engine in (octavo, hf):
        assert engine["output_tokens_per_s"] == pytest.approx(42 / engine["seconds"])
        assert engine["total_tokens_per_s"] == pytest.approx(96 / engine["seconds"])
        assert engine["requests_per_s"] == pytest.approx(6 / engine["seconds"])
        assert engine["peak_rss_mib"] > 0
        assert 0 < engine["kv_util_mean"] <= 1 and 0 < engine["kv_util_peak"] <= 1
    # HF pads each batch of 4 to 16 tokens, every request at its full 16: no padding waste
    assert hf["kv_util_peak"] == pytest.approx(1.0)
    (ratio,) = report["ratios"]
    assert ratio["speedup"] == pytest.approx(hf["seconds"] / octavo["seconds"])
    assert ratio["identical_outputs"] == 6
    assert octavo["details"]["block_size"] == 4


def test_throughput_outputs_equal_llm_generate(folder):
    from octavo.bench.engines import OctavoEngine, measure

    requests = make_workload("chat", 3, vocab_size=100, seed=2)
    requests = [type(r)(r.prompt_token_ids[:40], min(r.output_len, 20)) for r in requests]
    run = measure(OctavoEngine(str(folder), device="cpu"), requests, progress=False)
    llm = LLM(str(folder), device="cpu")
    expected = llm.generate([list(r.prompt_token_ids) for r in requests],
                            [SamplingParams(temperature=0, max_tokens=r.output_len,
                                            ignore_eos=True) for r in requests])
    assert run.token_ids == [list(o.outputs[0].token_ids) for o in expected]


def test_throughput_rejects_llama_cpp_without_a_gguf(folder):
    result = CliRunner().invoke(cli, ["bench", "throughput", "-m", str(folder), "-n", "1",
                                      "--compare", "llama.cpp", "--no-progress"])
    assert result.exit_code == 2 and "--llama-gguf" in result.output


def test_latency_splits_prefill_from_decode_steps(folder, tmp_path):
    llm = LLM(str(folder), device="cpu")
    requests = make_workload("random", 3, vocab_size=100, input_len=5, output_len=4)
    prefill, steps = time_batch(llm.engine, requests)
    assert prefill > 0 and len(steps) == 3  # first token comes with the prefill
    assert not llm.engine.has_unfinished_requests()

    out = tmp_path / "latency.json"
    result = CliRunner().invoke(cli, [
        "bench", "latency", "-m", str(folder), "--device", "cpu", "--batch-size", "3",
        "--input-len", "5", "--output-len", "4", "--num-iters", "2", "--num-warmup", "0",
        "--compare", "hf", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "octavo / hf (p50): prefill" in result.output
    report = json.loads(out.read_text())
    assert [e["engine"] for e in report["engines"]] == ["octavo", "hf"]
    for engine in report["engines"]:
        assert engine["decode_step_ms"]["count"] == 2 * 3
        assert engine["prefill_ms"]["count"] == 2
        assert engine["decode_tokens_per_s"] == pytest.approx(
            3 / (engine["decode_step_ms"]["mean"] / 1e3))
        assert engine["prefill_tokens_per_s"] == pytest.approx(
            15 / (engine["prefill_ms"]["mean"] / 1e3))
    octavo, hf = report["engines"]
    (ratio,) = report["ratios"]
    assert ratio["prefill_speedup"] == pytest.approx(
        hf["prefill_ms"]["p50"] / octavo["prefill_ms"]["p50"])


def test_latency_rejects_bad_iteration_counts(folder):
    result = CliRunner().invoke(cli, ["bench", "latency", "-m", str(folder), "--device", "cpu",
                                      "--num-iters", "0", "--no-progress"])
    assert result.exit_code == 2 and "num_iters > 0" in result.output


@pytest.mark.slow
@pytest.mark.skipif(not __import__("importlib").util.find_spec("llama_cpp"),
                    reason="llama-cpp-python is not installed")
def test_throughput_beside_llama_cpp_on_the_demo_model(tmp_path):
    """llama.cpp on the float32 copy of the demo GGUF agrees with Octavo token for token."""
    out = tmp_path / "llama.json"
    result = CliRunner().invoke(cli, [
        "bench", "throughput", "-n", "3", "--input-len", "24", "--output-len", "8",
        "--compare", "llama.cpp", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["engines"][1]["details"]["gguf"].endswith(".F32.gguf")
    assert report["ratios"][0]["identical_outputs"] == 3


def test_random_llama_and_model_are_exclusive(folder):
    result = CliRunner().invoke(cli, ["bench", "throughput", "-m", str(folder),
                                      "--random-llama", "135m", "--no-progress"])
    assert result.exit_code == 2 and "--model or --random-llama" in result.output
