"""``--compare vllm``: vLLM in a subprocess of its own Python, JSON in and out.

The default suite runs the real runner script under this Python with a stand-in ``vllm``
package (a few lines, importing nothing heavy) on ``PYTHONPATH``; a ``slow`` test runs the
real vLLM venv when one is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from octavo.cli import cli
from octavo_bench import vllm_runner
from octavo_bench.engines import measure
from octavo_bench.vllm_engine import VllmEngine, VllmFailed, kv_cache_gib, vllm_environment
from octavo_bench.workload import BenchRequest, make_workload

FAKE_VLLM = '''
"""A stand-in for vLLM: token i of a request is (sum of its prompt + i) % 100."""
import json
import os
import time

LOG = os.environ["FAKE_VLLM_LOG"]
ENV_KEYS = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS",
            "VLLM_CACHE_ROOT", "LD_PRELOAD", "OMP_WAIT_POLICY")


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _Out:
    def __init__(self, token_ids):
        self.outputs = [type("Completion", (), {"token_ids": token_ids})()]


class LLM:
    def __init__(self, model, **kwargs):
        if os.environ.get("FAKE_VLLM_FAIL"):
            raise RuntimeError("fake vLLM cannot start")
        self.log = {"model": model, "kwargs": kwargs, "calls": [], "resets": 0,
                    "env": {k: os.environ.get(k) for k in ENV_KEYS}}
        self._save()

    def generate(self, prompts, sampling_params, use_tqdm=True):
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(prompts)
        self.log["calls"].append([[p["prompt_token_ids"], s.kwargs]
                                  for p, s in zip(prompts, sampling_params)])
        self._save()
        time.sleep(0.05)
        return [_Out([(sum(p["prompt_token_ids"]) + i) % 100
                      for i in range(s.kwargs["max_tokens"])])
                for p, s in zip(prompts, sampling_params)]

    def reset_prefix_cache(self):
        self.log["resets"] += 1
        self._save()

    def _save(self):
        with open(LOG, "w") as f:
            json.dump(self.log, f)
'''


def fake_output(request: BenchRequest) -> list[int]:
    return [(sum(request.prompt_token_ids) + i) % 100 for i in range(request.output_len)]


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """This Python with the stand-in ``vllm`` importable; the path of the log it writes."""
    package = tmp_path / "fake" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_VLLM)
    (package / "inputs.py").write_text(
        "def TokensPrompt(prompt_token_ids):\n    return {'prompt_token_ids': prompt_token_ids}\n")
    log = tmp_path / "fake-vllm.json"
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    return log


def engine(**kwargs) -> VllmEngine:
    options = {"python": sys.executable, "dtype": "float32", "threads": 2,
               "max_model_len": 48, "max_num_seqs": 64, "max_num_batched_tokens": 2048,
               "kv_cache_gib": 3, **kwargs}
    return VllmEngine("/models/hf-folder", **options)


def test_runner_gets_the_requests_and_returns_tokens_and_timings(fake_vllm, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    requests = make_workload("random", 3, vocab_size=100, input_len=20, output_len=5, seed=3)
    requests.append(BenchRequest((1, 2, 3), 7))
    run = measure(engine(cache_dir=tmp_path / "vllm-cache"), requests, progress=False)
    assert run.engine == "vllm"
    assert run.token_ids == [fake_output(r) for r in requests]
    assert 0.05 <= run.seconds < 5 and run.load_seconds > 0
    assert run.cpu_seconds is not None and 0 <= run.cpu_seconds < 5
    log = json.loads(fake_vllm.read_text())
    assert log["model"] == "/models/hf-folder"
    assert log["kwargs"] == {"dtype": "float32", "max_model_len": 48, "max_num_seqs": 64,
                             "max_num_batched_tokens": 2048}
    warmup, timed = log["calls"]
    assert [ids for ids, _ in warmup] == [list(r.prompt_token_ids[:16]) for r in requests[:2]]
    assert log["resets"] == 1  # the prefix cache is reset between warm-up and timed run
    assert [ids for ids, _ in timed] == [list(r.prompt_token_ids) for r in requests]
    assert [params for _, params in timed][-1] == {"temperature": 0, "max_tokens": 7,
                                                   "min_tokens": 7, "ignore_eos": True}
    env = log["env"]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["OMP_NUM_THREADS"] == "2"
    first_two = sorted(os.sched_getaffinity(0))[:2]
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, first_two))
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm-cache")
    assert env["OMP_WAIT_POLICY"] is None  # vLLM sets its own OpenMP wait
    assert run.details["llm"]["dtype"] == "float32"
    assert run.details["env"]["OMP_WAIT_POLICY"] == "(unset)"
    assert run.details["versions"]["python"] == sys.version.split()[0]


def test_settings_from_the_environment_win(fake_vllm, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "9")
    run = measure(engine(), [BenchRequest((5, 6), 2)], progress=False)
    assert json.loads(fake_vllm.read_text())["env"]["VLLM_CPU_KVCACHE_SPACE"] == "9"
    assert run.details["env"]["VLLM_CPU_KVCACHE_SPACE"] == "9"


def test_a_failing_vllm_reports_the_end_of_its_output(fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    with pytest.raises(VllmFailed, match="(?s)exit status 1.*fake vLLM cannot start"):
        measure(engine(), [BenchRequest((5, 6), 2)], progress=False)


def test_environment_preloads_what_exists(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib").mkdir()
    python = venv / "bin" / "python"
    assert "libiomp5" not in vllm_environment(str(python), 2, 1, tmp_path).get("LD_PRELOAD", "")
    (venv / "lib" / "libiomp5.so").write_bytes(b"")
    env = vllm_environment(str(python), 1, 4, tmp_path)
    assert env["LD_PRELOAD"].split(":")[-1] == str(venv / "lib" / "libiomp5.so")
    assert env["OMP_NUM_THREADS"] == "1" and env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert kv_cache_gib(None) == 1 and kv_cache_gib(1.5) == 2 and kv_cache_gib(4) == 4


def test_process_tree_cpu_time_includes_children():
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.4: pass\n"
                              "time.sleep(30)"])
    try:
        pid = os.getpid()
        deadline = time.monotonic() + 20
        while vllm_runner.tree_cpu_seconds(pid) - time.process_time() < 0.3:
            assert time.monotonic() < deadline, "the child's CPU time never showed"
            time.sleep(0.1)
        assert vllm_runner.tree_peak_rss_bytes(pid) > 0
    finally:
        child.kill()
        child.wait()


def test_throughput_compare_vllm(fake_vllm, tiny_llama, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, [
        "bench", "throughput", "-m", str(tiny_llama), "--device", "cpu", "-n", "3",
        "--input-len", "9", "--output-len", "6", "--compare", "vllm", "--vllm-python",
        sys.executable, "--max-num-seqs", "8", "--threads", "1", "--no-progress",
        "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "octavo / vllm:" in result.output and "requests" in result.output
    assert "vllm settings: python=" in result.output and "llm.dtype=float32" in result.output
    report = json.loads(out.read_text())
    vllm = report["engines"][1]
    assert vllm["engine"] == "vllm" and vllm["load_seconds"] > 0 and vllm["cpu_util"] >= 0
    assert vllm["details"]["model"] == str(tiny_llama)  # an HF folder is used as is
    log = json.loads(fake_vllm.read_text())
    # Octavo's dtype and limits: float32 on the CPU, --max-num-seqs, its default token budget
    assert log["kwargs"] == {"dtype": "float32", "max_model_len": 15, "max_num_seqs": 8,
                             "max_num_batched_tokens": 2048}
    assert log["env"]["OMP_NUM_THREADS"] == "1"
    assert report["ratios"][0]["peer"] == "vllm"


def test_compare_vllm_needs_its_python(tiny_llama, monkeypatch):
    monkeypatch.delenv("OCTAVO_VLLM_PYTHON", raising=False)
    args = ["bench", "throughput", "-m", str(tiny_llama), "-n", "1", "--compare", "vllm",
            "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "--compare vllm needs --vllm-python PATH" in result.output
    result = CliRunner().invoke(cli, [*args, "--vllm-python", "/no/such/python"])
    assert result.exit_code == 2 and "/no/such/python: no such executable" in result.output


VLLM_PYTHON = os.environ.get("OCTAVO_VLLM_PYTHON") or "/work/peers/vllm/bin/python"


@pytest.mark.slow
@pytest.mark.skipif(not Path(VLLM_PYTHON).is_file(), reason="no vLLM venv (OCTAVO_VLLM_PYTHON)")
def test_real_vllm_on_the_demo_model(tmp_path):
    """vLLM's CPU build on the float32 HF copy of the demo GGUF agrees with Octavo."""
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, [
        "bench", "throughput", "-n", "2", "--input-len", "16", "--output-len", "8",
        "--compare", "vllm", "--vllm-python", VLLM_PYTHON, "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    vllm = report["engines"][1]
    assert vllm["details"]["model"].endswith(".F32") and vllm["details"]["versions"]["vllm"]
    assert report["ratios"][0]["identical_outputs"] == 2


def test_runner_answers_vllm_metadata_for_the_cpu_distribution():
    from importlib.metadata import PackageNotFoundError

    installed = {"vllm-cpu": "0.32.0", "torch": "2.13.0"}

    def original(name):
        if name not in installed:
            raise PackageNotFoundError(name)
        return installed[name]

    version = vllm_runner.vllm_version_lookup(original)
    assert version("vllm") == "0.32.0+cpu" and version("torch") == "2.13.0"
    with pytest.raises(PackageNotFoundError):
        version("numpy")
    installed["vllm"] = "0.33.0"
    assert version("vllm") == "0.33.0"
