"""``octavo bench throughput`` and ``octavo bench latency`` on a tiny model."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from octavo import LLM, SamplingParams
from octavo.cli import cli
from octavo.testing.tiny_models import save_tiny_model
from octavo_bench.engines import add_bench_requests
from octavo_bench.latency import time_batch
from octavo_bench.llama_cpp_engine import LlamaCppEngine
from octavo_bench.workload import make_workload


def bench_report(tmp_path, args: list[str]) -> tuple[str, dict]:
    """Run ``octavo bench ARGS``; its printed output and its JSON report."""
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["bench", *args, "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny_model(path, "llama")
    return path


def test_throughput_beside_hf(folder, tmp_path):
    output, report = bench_report(tmp_path, [
        "throughput", "-m", str(folder), "--device", "cpu", "--block-size", "4",
        "-n", "6", "--input-len", "9", "--output-len", "7", "--compare", "hf",
        "--hf-batch-size", "4"])
    assert "octavo / hf:" in output and "identical for 6/6 requests" in output
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
    from octavo_bench.engines import OctavoEngine, measure

    requests = make_workload("chat", 3, vocab_size=100, seed=2)
    requests = [type(r)(r.prompt_token_ids[:40], min(r.output_len, 20)) for r in requests]
    run = measure(OctavoEngine(str(folder), device="cpu"), requests, progress=False)
    llm = LLM(str(folder), device="cpu")
    expected = llm.generate([list(r.prompt_token_ids) for r in requests],
                            [SamplingParams(temperature=0, max_tokens=r.output_len,
                                            ignore_eos=True) for r in requests])
    assert run.token_ids == [list(o.outputs[0].token_ids) for o in expected]


def test_throughput_without_llama_cpp_names_the_extra(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # absent, installed or not
    assert not LlamaCppEngine.available()
    result = CliRunner().invoke(cli, ["bench", "throughput", "-m", str(folder), "-n", "1",
                                      "--compare", "llama.cpp", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "needs llama-cpp-python: pip install 'octavo-bench[llama-cpp]'" in result.output


def test_throughput_rejects_llama_cpp_without_a_gguf(folder, monkeypatch):
    """With llama-cpp-python present, a model without a GGUF asks for --llama-gguf."""
    monkeypatch.setattr(LlamaCppEngine, "available", staticmethod(lambda: True))
    result = CliRunner().invoke(cli, ["bench", "throughput", "-m", str(folder), "-n", "1",
                                      "--compare", "llama.cpp", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "needs a GGUF: pass --llama-gguf" in result.output


def test_latency_splits_prefill_from_decode_steps(folder, tmp_path):
    llm = LLM(str(folder), device="cpu")
    requests = make_workload("random", 3, vocab_size=100, input_len=5, output_len=4)
    timing = time_batch(llm.engine, requests)
    assert timing.prefill > 0 and len(timing.decode_steps) == 3  # first token with the prefill
    assert timing.first_token == [timing.prefill] * 3
    assert all(last > timing.prefill for last in timing.last_token)
    assert not llm.engine.has_unfinished_requests()

    output, report = bench_report(tmp_path, [
        "latency", "-m", str(folder), "--device", "cpu", "--batch-size", "3",
        "--input-len", "5", "--output-len", "4", "--num-iters", "2", "--num-warmup", "0",
        "--compare", "hf"])
    assert "octavo / hf (p50): prefill" in output and "TPOT" in output
    assert [e["engine"] for e in report["engines"]] == ["octavo", "hf"]
    for engine in report["engines"]:
        assert engine["decode_step_ms"]["count"] == 2 * 3
        assert engine["prefill_ms"]["count"] == 2
        assert engine["decode_tokens_per_s"] == pytest.approx(
            3 / (engine["decode_step_ms"]["mean"] / 1e3))
        assert engine["prefill_tokens_per_s"] == pytest.approx(
            15 / (engine["prefill_ms"]["mean"] / 1e3))
        # every request of a pass gets its first token with the whole batch's prefill
        assert engine["ttft_ms"]["count"] == 2 * 3 and engine["tpot_ms"]["count"] == 2 * 3
        assert engine["ttft_ms"]["mean"] == pytest.approx(engine["prefill_ms"]["mean"])
    octavo, hf = report["engines"]
    (ratio,) = report["ratios"]
    for key in ("prefill", "decode_step", "ttft", "tpot"):
        assert ratio[f"{key}_speedup"] == pytest.approx(
            hf[f"{key}_ms"]["p50"] / octavo[f"{key}_ms"]["p50"])


def test_latency_passes_compute_their_prompts(folder):
    """A pass after another finds nothing in the prefix cache: every prompt is computed."""
    llm = LLM(str(folder), device="cpu", block_size=4)
    engine = llm.engine
    requests = make_workload("random", 2, vocab_size=100, input_len=13, output_len=2)
    cached = []
    step = engine.step

    def recording_step():
        outputs = step()
        cached.extend(o.metrics.num_cached_tokens for o in outputs if o.finished)
        return outputs

    engine.step = recording_step
    time_batch(engine, requests)
    time_batch(engine, requests)
    assert cached == [0, 0, 0, 0]
    # without the reset, the same prompts would find their 3 full blocks cached
    add_bench_requests(engine, requests)
    while engine.has_unfinished_requests():
        engine.step()
    assert cached[4:] == [12, 12]


def test_latency_on_the_chat_mix(tmp_path_factory, tmp_path):
    """Mixed lengths: HF pads the batch, each request's TTFT and TPOT are reported."""
    folder = tmp_path_factory.mktemp("llama-long")
    save_tiny_model(folder, "llama", max_position_embeddings=2048)
    # seed 36 draws short outputs (45, 37 and 105 tokens) so the test stays quick
    output, report = bench_report(tmp_path, [
        "latency", "-m", str(folder), "--device", "cpu", "--workload", "chat",
        "--batch-size", "3", "--workload-seed", "36", "--num-iters", "1", "--num-warmup", "0",
        "--compare", "hf"])
    assert "workload=chat" in output and "TTFT (per request)" in output
    assert report["workload"]["name"] == "chat" and report["workload"]["output_tokens"] == 187
    octavo, hf = report["engines"]
    for engine in (octavo, hf):
        assert engine["ttft_ms"]["count"] == engine["tpot_ms"]["count"] == 3
        assert engine["ttft_ms"]["max"] <= engine["prefill_ms"]["max"] + 1e-6
    # HF runs 105 steps for everyone; Octavo's batch shrinks as requests finish
    assert hf["decode_step_ms"]["count"] == 104 and octavo["decode_step_ms"]["count"] == 104
    (ratio,) = report["ratios"]
    assert ratio["ttft_speedup"] == pytest.approx(hf["ttft_ms"]["p50"] / octavo["ttft_ms"]["p50"])
    assert ratio["tpot_speedup"] == pytest.approx(hf["tpot_ms"]["p50"] / octavo["tpot_ms"]["p50"])


def test_latency_rejects_bad_iteration_counts(folder):
    result = CliRunner().invoke(cli, ["bench", "latency", "-m", str(folder), "--device", "cpu",
                                      "--num-iters", "0", "--no-progress"])
    assert result.exit_code == 2 and "num_iters > 0" in result.output


@pytest.mark.slow
@pytest.mark.skipif(not __import__("importlib").util.find_spec("llama_cpp"),
                    reason="llama-cpp-python is not installed")
def test_throughput_beside_llama_cpp_on_the_demo_model(tmp_path):
    """llama.cpp on the float32 copy of the demo GGUF agrees with Octavo token for token."""
    output, report = bench_report(tmp_path, [
        "throughput", "-n", "3", "--input-len", "24", "--output-len", "8",
        "--compare", "llama.cpp"])
    assert report["engines"][1]["details"]["gguf"].endswith(".F32.gguf")
    assert report["ratios"][0]["identical_outputs"] == 3


def test_random_llama_and_model_are_exclusive(folder):
    result = CliRunner().invoke(cli, ["bench", "throughput", "-m", str(folder),
                                      "--random-llama", "135m", "--no-progress"])
    assert result.exit_code == 2 and "--model or --random-llama" in result.output


def test_throughput_warmup_leaves_no_cached_prefix(folder):
    from octavo_bench.engines import OctavoEngine

    engine = OctavoEngine(str(folder), device="cpu", block_size=4)
    engine.load()
    engine.warmup(make_workload("random", 2, vocab_size=100, input_len=20, output_len=2))
    assert engine.llm.engine.core.scheduler.kv_cache.pool.num_cached_blocks == 0
