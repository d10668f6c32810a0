"""Paged attention of a batch of decodes on the CPU: octavo_cpu's kernel against the torch
backend (the context gathered from the blocks, then SDPA), SmolLM2-135M's heads (9 query and
3 KV heads of 64), float32, the cache blocks scattered through a pool, interleaved in one
process.

Usage::

    python packages/kernels-cpu/benchmarks/bench_attention.py
    python packages/kernels-cpu/benchmarks/bench_attention.py --shape 16x128 --repeats 9
    python packages/kernels-cpu/benchmarks/bench_attention.py --threads 1 --layers 30

The table shows milliseconds per call of one layer (median and best of the repeats of
``--calls`` calls), the speed-up and the load average before each line. With ``--threads 1``
the times are the calling thread's CPU time (``time.thread_time``: other processes on a shared
machine do not count), else wall-clock time. ``--layers N`` gives each call of a run its own
blocks of the pool, as the layers of a model's step have (the pool holds as many layers as
fit, at most N): their K/V then come from memory rather than from the last level cache.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_linear import load, start

from octavo.attention.base import AttentionMetadata
from octavo.attention.torch_backend import TorchAttentionBackend
from octavo_cpu.backend import CpuAttentionBackend

HEADS, KV_HEADS, HEAD_SIZE, BLOCK_SIZE, POOL_BLOCKS = 9, 3, 64, 16, 8192


def problem(decodes: int, context: int, g: torch.Generator, layers: int = 1):
    """Caches, the new tokens' q/k/v and the metadata of ``decodes`` one-token steps: one
    metadata per layer, each on its own blocks of the pool (as many layers as fit)."""
    caches = [torch.randn(POOL_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_SIZE, generator=g)
              for _ in range(2)]
    per_seq = -(-context // BLOCK_SIZE)
    layers = max(1, min(layers, POOL_BLOCKS // (decodes * per_seq)))
    pool = torch.randperm(POOL_BLOCKS, generator=g)
    positions = torch.full((decodes,), context - 1)
    metadata = []
    for layer in range(layers):
        tables = pool[layer * decodes * per_seq:(layer + 1) * decodes * per_seq]
        tables = tables.view(decodes, per_seq)
        slots = tables[:, -1] * BLOCK_SIZE + positions % BLOCK_SIZE
        metadata.append(AttentionMetadata(
            slot_mapping=slots, query_start_loc=torch.arange(decodes + 1, dtype=torch.int32),
            seq_lens=torch.full((decodes,), context, dtype=torch.int32),
            block_tables=tables.to(torch.int32), max_query_len=1, max_seq_len=context,
            query_start_loc_cpu=list(range(decodes + 1)), seq_lens_cpu=[context] * decodes))
    q = torch.randn(decodes, HEADS, HEAD_SIZE, generator=g)
    k = torch.randn(decodes, KV_HEADS, HEAD_SIZE, generator=g)
    v = torch.randn(decodes, KV_HEADS, HEAD_SIZE, generator=g)
    return caches, (q, k, v), metadata


def calls(backend, qkv, caches, metadata: list[AttentionMetadata], n: int):
    """A run: ``n`` forward calls of one layer's attention, cycling through the layers."""
    return lambda: [backend.forward(*qkv, *caches, metadata[i % len(metadata)])
                    for i in range(n)]


def time_interleaved(runs, repeats: int, clock) -> dict[str, list[float]]:
    """Each repeat runs every method once, in turn, after one warm-up run of each."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = clock()
            run()
            times[name].append(clock() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="DECODESxCONTEXT (repeatable; "
                        "default 1x128 16x128 16x1024 64x160 64x800)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--layers", type=int, default=1,
                        help="give each call its own blocks, up to this many layers' worth")
    args = parser.parse_args()
    g = start(args)
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    print(f"times: {'thread CPU time' if clock is time.thread_time else 'wall-clock'}, "
          f"threads {torch.get_num_threads()}, --layers {args.layers}")
    scale = HEAD_SIZE ** -0.5
    backends = {"torch": TorchAttentionBackend(HEADS, HEAD_SIZE, KV_HEADS, scale),
                "octavo_cpu": CpuAttentionBackend(HEADS, HEAD_SIZE, KV_HEADS, scale)}
    print("| decodes x context | layers | torch backend ms (best) | octavo_cpu ms (best) | "
          "speed-up | load |")
    print("|---|---:|---:|---:|---:|---|")
    for shape in args.shape or ["1x128", "16x128", "16x1024", "64x160", "64x800"]:
        decodes, context = (int(n) for n in shape.split("x"))
        caches, qkv, metadata = problem(decodes, context, g, args.layers)
        before = load()
        runs = {name: calls(backend, qkv, caches, metadata, args.calls)
                for name, backend in backends.items()}
        diff = max((a - b).abs().max().item()
                   for a, b in zip(runs["torch"](), runs["octavo_cpu"]()))
        assert diff < 1e-4, f"the kernel disagrees with the torch backend by {diff}"
        times = {name: [t / args.calls * 1e3 for t in ts]
                 for name, ts in time_interleaved(runs, args.repeats, clock).items()}
        med = {name: statistics.median(ts) for name, ts in times.items()}
        print(f"| {decodes} x {context} | {len(metadata)} | {med['torch']:.3f} ({min(times['torch']):.3f}) | "
              f"{med['octavo_cpu']:.3f} ({min(times['octavo_cpu']):.3f}) | "
              f"{med['torch'] / med['octavo_cpu']:.1f}x | {before} |", flush=True)


if __name__ == "__main__":
    main()
