"""Layer ops on the CPU: octavo_cpu's C++ ops against core's torch code, on SmolLM2-135M's
shapes (hidden 576, 9 query + 3 KV heads of 64, intermediate 1536), interleaved in one process.

Usage::

    python packages/kernels-cpu/benchmarks/bench_layer_ops.py
    python packages/kernels-cpu/benchmarks/bench_layer_ops.py --m 1 16 --repeats 9

Each op is called as the layer calls it (the torch code with its Python, the C++ op through
``CpuLayerOps``). A repeat times ``--calls`` calls of each method in turn (A, B, A, B, ...);
the table shows microseconds per call, median (best) of the repeats, the speed-up and the
load average before each line. A decode step of the model makes 30 calls of each op per layer
kind (60 norms with the fused ones).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from bench_linear import load, start, time_interleaved, wait_for_quiet

from octavo.attention.torch_backend import write_kv_cache
from octavo.layers.activation import silu_and_mul
from octavo.layers.norm import rms_norm
from octavo.layers.rotary import apply_rotary_torch
from octavo_cpu.layer_ops import CpuLayerOps, _kernels

HIDDEN, HEADS, KV_HEADS, HEAD_SIZE, INTERMEDIATE = 576, 9, 3, 64, 1536
BLOCK_SIZE = 16
EPS = 1e-5


def fused_add_rms_norm_torch(x, residual, weight, eps):
    total = x + residual  # as RMSNorm.forward(x, residual) does without a faster op
    return rms_norm(total, weight, eps), total


def problems(m: int, dtype: torch.dtype, g: torch.Generator) -> dict[str, tuple]:
    """op -> (torch method, octavo_cpu method, arguments)."""
    x = torch.randn(m, HIDDEN, generator=g).to(dtype)
    residual = torch.randn(m, HIDDEN, generator=g).to(dtype)
    weight = torch.randn(HIDDEN, generator=g).to(dtype)
    qkv = torch.randn(m, (HEADS + 2 * KV_HEADS) * HEAD_SIZE, generator=g).to(dtype)
    qk = qkv[:, : (HEADS + KV_HEADS) * HEAD_SIZE].view(m, HEADS + KV_HEADS, HEAD_SIZE)
    angles = torch.rand(m, HEAD_SIZE // 2, generator=g) * 100
    key = qk[:, HEADS:]
    value = qkv[:, (HEADS + KV_HEADS) * HEAD_SIZE:].view(m, KV_HEADS, HEAD_SIZE)
    blocks = 4 * (m // BLOCK_SIZE + 1)
    caches = [torch.zeros(blocks, BLOCK_SIZE, KV_HEADS, HEAD_SIZE, dtype=dtype)
              for _ in range(2)]
    slots = torch.randperm(blocks * BLOCK_SIZE, generator=g)[:m]
    gate_up = torch.randn(m, 2 * INTERMEDIATE, generator=g).to(dtype)
    kernels = _kernels()
    return {
        "rms_norm": (rms_norm, CpuLayerOps.rms_norm, (x, weight, EPS)),
        "fused_add_rms_norm": (fused_add_rms_norm_torch, CpuLayerOps.fused_add_rms_norm,
                               (x, residual, weight, EPS)),
        "rotary": (apply_rotary_torch, CpuLayerOps.rotary,
                   (qk, angles.cos(), angles.sin(), True)),
        "silu_and_mul": (silu_and_mul, CpuLayerOps.silu_and_mul, (gate_up,)),
        "write_kv_cache": (write_kv_cache, kernels.write_kv_cache,
                           (key, value, *caches, slots)),
    }


def repeated(fn: Callable, args: tuple, calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn(*args)
    return run


def bench_line(op: str, m: int, dtype: torch.dtype, torch_fn, octavo_fn, args, calls: int,
               repeats: int) -> str:
    runs = {"torch": repeated(torch_fn, args, calls), "octavo": repeated(octavo_fn, args, calls)}
    before = load()
    times = {name: [t / calls for t in ts]
             for name, ts in time_interleaved(runs, repeats).items()}
    cells = [f"{statistics.median(times[n]) * 1e6:8.1f} ({min(times[n]) * 1e6:7.1f})"
             for n in runs]
    speedup = statistics.median(times["torch"]) / statistics.median(times["octavo"])
    dtype_name = str(dtype).removeprefix("torch.")
    return (f"{op:>18} {dtype_name:>8} {m:5d} | {' | '.join(cells)} | {speedup:6.2f}x | "
            f"{before}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 16, 64, 512], help="rows")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--calls", type=int, default=200, help="calls per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each row count, wait up to this long for an idle second")
    args = parser.parse_args()
    generator = start(args)
    print(f"us per call: median (best) of {args.repeats} repeats of {args.calls} calls; "
          "x = torch / octavo")
    print(f"{'op':>18} {'dtype':>8} {'M':>5} | {'torch':^18} | {'octavo_cpu':^18} | "
          f"{'x':>7} | load")
    for dtype in (getattr(torch, name) for name in args.dtype):
        for m in args.m:
            wait_for_quiet(args.wait_quiet)
            for op, (torch_fn, octavo_fn, op_args) in problems(m, dtype, generator).items():
                print(bench_line(op, m, dtype, torch_fn, octavo_fn, op_args, args.calls,
                                 args.repeats), flush=True)


if __name__ == "__main__":
    main()
