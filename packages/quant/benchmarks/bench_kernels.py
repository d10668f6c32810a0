"""The quantized CPU products of octavo_quant against the dense float32 ones, SmolLM2 shapes.

    python packages/quant/benchmarks/bench_kernels.py [--bits 4] [--group-size 128] [--rounds 7]

Per shape (qkv 960x576, gate+up 3072x576, down 576x1536 of SmolLM2-135M) and row count (1, 4,
16, 64), times a float32 input through: ``F.linear`` on the dequantized float32 weight; the float32
model's own product (the ``pack_linear`` layer op: octavo-kernels-cpu's packed kernel, or
core's oneDNN); the reference (dequantize each call, then ``F.linear``); torch's int4 product
(``Int4CpuKernel``, bfloat16 inside, casts included); and the ``pack_int4_linear`` layer op
(``PackedInt4Kernel``, float32). One thread; the machine is shared, so each call is timed in
CPU time of this thread (``time.thread_time``: time spent descheduled does not count), the
calls are interleaved in rounds and each cell is the median over the rounds of a round's mean;
the ratio column divides torch's int4 time by each one (above 1: faster than torch's int4).

``--bits 8``: an 8-bit weight through ``F.linear``, the packed float32 product, the reference and
the ``pack_int8_linear`` layer op (``PackedInt8Kernel``, float32); the ratio column divides the
packed float32 time by each one (above 1: faster than the float32 model's product).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from octavo.layers.dense import pack_dense
from octavo.layers.layer_ops import find_layer_op
from octavo_quant.kernels import Int4CpuKernel, PackedInt4Kernel, PackedInt8Kernel, find_pack_op
from octavo_quant.unpacked import UnpackedWeight

SHAPES = ((960, 576), (3072, 576), (576, 1536))  # out x in: qkv, gate+up, down


def random_weight(out_features: int, in_features: int, group_size: int,
                  bits: int = 4) -> UnpackedWeight:
    g_idx = torch.arange(in_features) // (group_size if group_size > 0 else in_features)
    groups = int(g_idx.max()) + 1
    levels = 1 << bits
    return UnpackedWeight(qweight=torch.randint(0, levels, (in_features, out_features),
                                                dtype=torch.int32),
                          zeros=torch.randint(0, levels, (groups, out_features),
                                              dtype=torch.int32),
                          scales=(torch.rand(groups, out_features) * 0.16 / levels).half(),
                          g_idx=g_idx, bits=bits)


TORCH_INT4 = "torch int4 (bfloat16 inside)"
DENSE_PACKED = "dense packed (float32 model)"


def products(weight: UnpackedWeight, x: torch.Tensor) -> dict:
    dense = weight.dequantize()
    packed_dense = pack_dense(dense)
    fns = {"dense F.linear": lambda: F.linear(x, dense)}
    if packed_dense is not None:
        fns[DENSE_PACKED] = lambda: packed_dense(x)
    fns["reference (dequantize + F.linear)"] = lambda: F.linear(x, weight.dequantize())
    if weight.bits == 8:
        pack = find_pack_op("pack_int8_linear", x.dtype)
        if pack is not None:
            packed_int8 = PackedInt8Kernel.build(weight, pack)
            fns["pack_int8_linear (float32)"] = lambda: packed_int8(None, x, None)
        return fns
    torch_int4 = Int4CpuKernel.build(weight)
    pack = find_layer_op("pack_int4_linear", x)
    fns[TORCH_INT4] = lambda: torch_int4(None, x, None)
    if pack is not None:
        packed_int4 = PackedInt4Kernel.build(weight, pack)
        fns["pack_int4_linear (float32)"] = lambda: packed_int4(None, x, None)
    return fns


def time_interleaved(fns: dict, rounds: int) -> dict:
    for fn in fns.values():  # warm up: first calls pack, allocate, build
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            reps = 2 if name.startswith("reference") else 20
            start = time.thread_time()
            for _ in range(reps):
                fn()
            samples[name].append((time.thread_time() - start) / reps * 1e6)
    return {name: statistics.median(times) for name, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)  # thread_time measures this thread only
    torch.manual_seed(0)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, 1 thread, {args.bits}-bit, "
          f"group size {args.group_size}, thread CPU time, median of {args.rounds} interleaved "
          f"rounds, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for out_features, in_features in SHAPES:
        weight = random_weight(out_features, in_features, args.group_size, args.bits)
        for rows in (1, 4, 16, 64):
            times = time_interleaved(products(weight, torch.randn(rows, in_features)),
                                     args.rounds)
            base = times.get(TORCH_INT4) or times.get(DENSE_PACKED) or times["dense F.linear"]
            print(f"{out_features}x{in_features} rows {rows}:", flush=True)
            for name, us in times.items():
                print(f"    {name:36s} {us:9.1f} us  x{base / us:5.2f}", flush=True)
    print(f"load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
