"""torch's CPU int4 product against the dense float32 product on SmolLM2's layer shapes.

    python packages/quant/benchmarks/bench_int4.py [--threads 1] [--group-size 64]

Prints, per shape and row count, the best of 5 x 50 calls of: ``F.linear`` on a float32
weight; ``_weight_int4pack_mm_for_cpu`` with float32, bfloat16 and float16 activations; and
the CPU capability, so a run says which machine it came from.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = ((960, 576), (3072, 576), (576, 1536))  # qkv, gate+up, down of SmolLM2-135M


def best_us(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps * 1e6)
    return best


def bench_shape(out_features: int, in_features: int, group_size: int, rows: int) -> dict:
    codes = torch.randint(0, 16, (out_features, in_features), dtype=torch.int32)
    scales = torch.rand(in_features // group_size, out_features) * 0.01
    zeros = torch.randint(0, 16, scales.shape).float()
    weight = ((codes.float() - zeros.repeat_interleave(group_size, 0).t())
              * scales.repeat_interleave(group_size, 0).t()).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales_zeros = torch.stack([scales, (8 - zeros) * scales], -1).contiguous()
    x = torch.randn(rows, in_features)
    result = {"float32 F.linear": best_us(lambda: F.linear(x, weight))}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        xd, szd = x.to(dtype), scales_zeros.to(dtype)
        result[f"int4pack {dtype}"] = best_us(
            lambda xd=xd, szd=szd: torch.ops.aten._weight_int4pack_mm_for_cpu(
                xd, packed, group_size, szd))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, threads {args.threads}")
    for out_features, in_features in SHAPES:
        for rows in (1, 16, 64):
            times = bench_shape(out_features, in_features, args.group_size, rows)
            cells = "  ".join(f"{name} {us:9.1f} us" for name, us in times.items())
            print(f"{out_features}x{in_features} rows {rows}: {cells}", flush=True)


if __name__ == "__main__":
    main()
