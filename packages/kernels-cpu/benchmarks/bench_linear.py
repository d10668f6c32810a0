"""Dense products on the CPU: octavo_cpu's packed kernel beside oneDNN's packed product and
``F.linear``, on SmolLM2-135M's shapes, interleaved in one process.

Usage::

    OMP_WAIT_POLICY=PASSIVE python packages/kernels-cpu/benchmarks/bench_linear.py
    python packages/kernels-cpu/benchmarks/bench_linear.py --m 1 16 64 --repeats 7 --lm-head

One pass is the model's layer products in order, each layer with its own weights (so they
come from memory, as in a decode step): qkv [960x576], o [576x576], gate_up [3072x576],
down [576x1536]; 30 layers for small M, fewer for large M (a pass is then scaled to 30
layers; those weights may sit in L3, which the large, compute-bound products do not need).
``--lm-head`` adds the tied LM head [49152x576] as its own line. Each repeat runs every
method once, in turn (A, B, C, A, B, C, ...); the table shows the median of the repeats
(and the best), GB/s of weight read, GFLOP/s, and the load average before each line.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from octavo_cpu import dense
from octavo_cpu.build import isa_level

LAYER_SHAPES = (("qkv", 960, 576), ("o", 576, 576), ("gate_up", 3072, 576), ("down", 576, 1536))
LM_HEAD = ("lm_head", 49152, 576)
DEFAULT_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 2048)
NOTABLE_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile",
                 "amx_bf16")
PASS_FLOPS = 15e9  # fewer layers per pass above this many flops (30 layers at M <= 64)


def machine_line() -> str:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                flags = [f for f in NOTABLE_FLAGS if f in present]
                break
    except OSError:
        pass
    return (f"cpu: {model} | flags: {' '.join(flags)} | torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()}) | octavo_cpu {isa_level()}, panel "
            f"{dense.panel_width()} | threads {torch.get_num_threads()} | "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def idle_fraction(seconds: float = 1.0) -> float:
    """The share of CPU time idle over the next ``seconds`` (from /proc/stat; 1.0 elsewhere)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(limit: float) -> None:
    """Wait up to ``limit`` seconds for a second in which the CPUs are at least 95% idle
    (other processes on a shared machine skew every figure)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and idle_fraction() < 0.95:
        pass


class Weights:
    """One weight per (layer, product) in the three forms the methods read."""

    def __init__(self, shapes, layers: int, generator: torch.Generator) -> None:
        self.shapes = [(name, n, k) for _ in range(layers) for name, n, k in shapes]
        plain = [torch.randn(n, k, generator=generator) / math.sqrt(k)
                 for _, n, k in self.shapes]
        self.plain = plain
        self.octavo = [dense.pack(w) for w in plain]
        self.onednn = [torch.ops.mkldnn._reorder_linear_weight(w, 16) for w in plain]

    def bytes(self) -> int:
        return sum(4 * n * k for _, n, k in self.shapes)

    def flops(self, m: int) -> int:
        return sum(2 * m * n * k for _, n, k in self.shapes)


def methods(weights: Weights, inputs: dict[int, torch.Tensor]) -> dict[str, Callable[[], list]]:
    """Each method runs every product of a pass on the inputs."""
    def octavo():
        return [dense.linear(inputs[w.in_features], w) for w in weights.octavo]

    def onednn():
        return [torch.ops.mkldnn._linear_pointwise(inputs[k], w, None, "none", [], "")
                for (_, _, k), w in zip(weights.shapes, weights.onednn)]

    def f_linear():
        return [F.linear(inputs[w.shape[1]], w) for w in weights.plain]

    return {"octavo": octavo, "oneDNN": onednn, "F.linear": f_linear}


def time_interleaved(runs: dict[str, Callable[[], list]], repeats: int) -> dict[str, list[float]]:
    for run in runs.values():  # warm up (first touch, oneDNN's primitive cache)
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def max_diff(runs: dict[str, Callable[[], list]]) -> float:
    ours, ref = runs["octavo"](), runs["F.linear"]()
    return max((a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)
               for a, b in zip(ours, ref))


def layers_for(m: int, shapes, max_layers: int) -> int:
    per_layer = sum(2 * m * n * k for _, n, k in shapes)
    return max(1, min(max_layers, math.ceil(PASS_FLOPS / per_layer)))


def bench_line(label: str, m: int, shapes, layers: int, scale: float, repeats: int,
               generator: torch.Generator, wait_quiet: float = 0.0) -> str:
    weights = Weights(shapes, layers, generator)
    inputs = {k: torch.randn(m, k, generator=generator) for k in {k for _, _, k in shapes}}
    runs = methods(weights, inputs)
    wait_for_quiet(wait_quiet)
    before = load()
    times = time_interleaved(runs, repeats)
    cells = []
    for name in runs:
        median, best = statistics.median(times[name]), min(times[name])
        cells.append(f"{median * scale * 1e3:8.2f} ({best * scale * 1e3:7.2f})")
    ours = statistics.median(times["octavo"])
    gbps = weights.bytes() / ours / 1e9
    gflops = weights.flops(m) / ours / 1e9
    vs = statistics.median(times["oneDNN"]) / ours
    return (f"{label:>8} {m:5d} {layers:3d} | {' | '.join(cells)} | {gbps:6.1f} {gflops:6.1f} "
            f"| {vs:5.2f}x | {max_diff(runs):.1e} | {before}")


def start(args: argparse.Namespace) -> torch.Generator:
    """Apply ``--threads``, turn autograd off, print the machine line; a seeded generator."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    print(machine_line())
    return torch.Generator().manual_seed(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, nargs="+", default=list(DEFAULT_M), help="rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=30, help="at most this many layers")
    parser.add_argument("--lm-head", action="store_true", help="also time the LM head")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each line, wait up to this long for an idle second")
    args = parser.parse_args()
    generator = start(args)
    print("ms per pass scaled to 30 layers (120 products), or per LM head: median (best) of "
          f"{args.repeats}; GB/s and GFLOP/s of octavo's median; x = oneDNN / octavo; "
          "diff = octavo vs F.linear, max relative to max |y|")
    print(f"{'what':>8} {'M':>5} {'lay':>3} | {'octavo':^18} | {'oneDNN packed':^18} | "
          f"{'F.linear':^18} | {'GB/s':>6} {'GFLOP':>6} | {'x':>6} | {'diff':>7} | load")
    for m in args.m:
        layers = layers_for(m, LAYER_SHAPES, args.layers)
        print(bench_line("layers", m, LAYER_SHAPES, layers, 30 / layers, args.repeats,
                         generator, args.wait_quiet), flush=True)
        if args.lm_head:
            print(bench_line("lm_head", m, [LM_HEAD], 1, 1.0, args.repeats,
                             generator, args.wait_quiet), flush=True)


if __name__ == "__main__":
    main()
