"""Microbenchmark: Triton paged attention vs the torch reference (and octavo_cuda if present).

Usage (CUDA only)::

    python packages/kernels-triton/benchmarks/bench_paged_attention.py [--sweep] [--quick]

Each row times one backend's full ``forward`` (cache write + attention) with
``triton.testing.do_bench`` (median) and prints ms, the achieved bandwidth over the minimum
bytes moved (KV read once, Q/K/V read, output written), TFLOP/s, the speed-up over torch and
the max abs difference from torch. A failing row prints its error and the run goes on.
``--sweep`` also times Triton launch configurations for each shape. Without it the run takes
about 10 s on an H200. The torch reference loops over requests in Python, so its times are
host-bound; timings of ~0.1 ms kernels vary by tens of percent between runs (GPU clocks).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass

import torch


@dataclass
class Shape:
    name: str
    num_seqs: int
    query_len: int  # new tokens per request
    context_len: int  # seq_len incl. the new tokens
    num_heads: int = 32
    num_kv_heads: int = 8
    head_size: int = 128
    block_size: int = 16
    dtype: torch.dtype = torch.bfloat16


SHAPES = [
    Shape("decode 64x1024", 64, 1, 1024),
    Shape("decode 8x8192 (split-KV)", 8, 1, 8192),
    Shape("decode 256x512 bs32", 256, 1, 512, block_size=32),
    Shape("prefill chunk 4x512 on 2048", 4, 512, 2048),
    Shape("prefill 2x2048 d64", 2, 2048, 2048, head_size=64),
    Shape("mixed 1x512 chunk + 63 decodes", 0, 0, 0),  # built by make_mixed
]


def make_inputs(shape: Shape, device: str = "cuda", mixed: bool = False):
    """Random Q/K/V, a random paged cache and metadata, built vectorized on the device."""
    from octavo.attention.base import AttentionMetadata

    if mixed:
        query_lens = [512] + [1] * 63
        seq_lens = [2048] + [1024] * 63
    else:
        query_lens = [shape.query_len] * shape.num_seqs
        seq_lens = [shape.context_len] * shape.num_seqs
    bs = shape.block_size
    blocks = [-(-s // bs) for s in seq_lens]
    num_blocks = sum(blocks) + 1
    max_blocks = max(blocks)
    perm = torch.randperm(num_blocks - 1, device=device).to(torch.int32) + 1
    block_tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32, device=device)
    offset = 0
    for i, n in enumerate(blocks):
        block_tables[i, :n] = perm[offset:offset + n]
        offset += n
    positions = torch.cat([torch.arange(s - q, s, device=device)
                           for q, s in zip(query_lens, seq_lens)])
    seq_ids = torch.cat([torch.full((q,), i, device=device) for i, q in enumerate(query_lens)])
    slot_mapping = (block_tables[seq_ids, positions // bs].long() * bs + positions % bs)
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    metadata = AttentionMetadata(
        slot_mapping=slot_mapping,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables, max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        query_start_loc_cpu=starts, seq_lens_cpu=seq_lens)
    num_tokens = starts[-1]
    h, kh, d = shape.num_heads, shape.num_kv_heads, shape.head_size
    query = torch.randn(num_tokens, h, d, device=device, dtype=shape.dtype)
    key = torch.randn(num_tokens, kh, d, device=device, dtype=shape.dtype)
    value = torch.randn(num_tokens, kh, d, device=device, dtype=shape.dtype)
    cache_shape = (num_blocks, bs, kh, d)
    key_cache = torch.randn(cache_shape, device=device, dtype=shape.dtype)
    value_cache = torch.randn(cache_shape, device=device, dtype=shape.dtype)
    return query, key, value, key_cache, value_cache, metadata


def traffic(shape: Shape, metadata, query) -> tuple[float, float]:
    """(bytes, flops): KV read once per KV head, Q/K/V/out once; causal score + PV flops."""
    elem = query.element_size()
    kh, d, h = shape.num_kv_heads, shape.head_size, shape.num_heads
    kv = 2 * sum(metadata.seq_lens_cpu) * kh * d * elem
    tokens = metadata.num_tokens
    qo = tokens * (2 * h + 2 * kh) * d * elem
    flops = 0.0
    starts = metadata.query_start_loc_cpu
    for i, s in enumerate(metadata.seq_lens_cpu):
        q = starts[i + 1] - starts[i]
        keys_seen = q * (s - q) + q * (q + 1) / 2  # causal
        flops += 4 * h * d * keys_seen
    return kv + qo, flops


def other_backends():
    """Registered attention backends other than torch/triton (octavo_cuda's ``cuda``).

    Falls back to importing ``octavo_cuda.backend`` when the plugin registry cannot load.
    """
    found = []
    try:
        from octavo.plugins import attention_backends

        registry = attention_backends()
        for name in registry:
            if name in ("torch", "triton"):
                continue
            try:
                found.append((name, registry.get(name)))
            except Exception as exc:
                print(f"# backend {name!r} not importable: {exc}")
        return found
    except Exception as exc:
        print(f"# plugin registry unavailable ({type(exc).__name__}: {exc}); trying octavo_cuda")
    try:
        from octavo_cuda.backend import CudaAttentionBackend

        found.append(("cuda", CudaAttentionBackend))
    except Exception as exc:
        print(f"# octavo_cuda not importable: {type(exc).__name__}: {exc}")
    return found


def bench(fn, rep_ms: int) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms,
                                   return_mode="median")


def run_shape(shape: Shape, backends, rep_ms: int, sweep: bool) -> None:
    from octavo.attention.torch_backend import TorchAttentionBackend

    mixed = shape.name.startswith("mixed")
    inputs = make_inputs(shape, mixed=mixed)
    query, key, value, key_cache, value_cache, md = inputs
    nbytes, flops = traffic(shape, md, query)
    h, kh, d = shape.num_heads, shape.num_kv_heads, shape.head_size
    print(f"\n## {shape.name}: tokens={md.num_tokens} seqs={md.num_seqs} H={h} KH={kh} D={d} "
          f"block={shape.block_size} {str(shape.dtype).removeprefix('torch.')} "
          f"(min traffic {nbytes / 1e6:.1f} MB, {flops / 1e9:.2f} GFLOP)")
    print(f"{'backend':<34}{'ms':>10}{'GB/s':>10}{'TFLOP/s':>10}{'vs torch':>10}{'max|diff|':>11}")

    reference = None
    torch_ms = None
    rows = [("torch", TorchAttentionBackend, None)]
    rows += [(name, cls, None) for name, cls in backends]
    if sweep:
        for cfg in sweep_configs(shape, md):
            rows.append((f"triton {cfg}", backends_triton(), cfg))
    for name, cls, cfg in rows:
        try:
            if cls is None:
                raise RuntimeError("backend class unavailable")
            if not cls.supports("cuda", shape.dtype, d):
                print(f"{name:<34}  (does not support this shape)")
                continue
            backend = cls(h, d, kh, d ** -0.5)
            if cfg is not None:
                backend.launch_config = dict(cfg)
            kc, vc = key_cache.clone(), value_cache.clone()

            def fn(backend=backend, kc=kc, vc=vc):
                return backend.forward(query, key, value, kc, vc, md)

            out = fn()
            torch.cuda.synchronize()
            ms = bench(fn, rep_ms if name != "torch" else max(50, rep_ms // 2))
            if name == "torch":
                reference, torch_ms = out.float(), ms
            diff = (out.float() - reference).abs().max().item() if reference is not None else 0.0
            speedup = f"{torch_ms / ms:.2f}x" if torch_ms else "-"
            print(f"{name:<34}{ms:>10.3f}{nbytes / ms / 1e6:>10.0f}{flops / ms / 1e9:>10.1f}"
                  f"{speedup:>10}{diff:>11.2e}")
        except Exception as exc:  # one failing row must not stop the run
            print(f"{name:<34}  ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            traceback.print_exc(limit=3, file=sys.stdout)
        sys.stdout.flush()
    del inputs, key_cache, value_cache
    torch.cuda.empty_cache()


def backends_triton():
    try:
        from octavo_triton.backend import TritonAttentionBackend

        return TritonAttentionBackend
    except Exception as exc:
        print(f"# octavo_triton not importable: {exc}")
        return None


def sweep_configs(shape: Shape, md) -> list[dict]:
    """Launch configurations to compare with the default (``{}``, timed first and last)."""
    if md.max_query_len == 1:
        configs = [{"block_n": n, "num_stages": st} for n, st in ((64, 2), (128, 2), (32, 3))]
        configs += [{"num_splits": sp, "block_n": n, "num_stages": st}
                    for sp in (1, 2, 4) for n, st in ((64, 3), (128, 2))]
    else:
        configs = [{"block_m": m, "block_n": n, "num_warps": w, "num_stages": st}
                   for m, n, w, st in ((64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3),
                                       (64, 32, 4, 2), (64, 128, 4, 2))]
        configs.append({"mixed_launches": False})
    return [{}] + configs + [{}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time Triton configurations")
    parser.add_argument("--quick", action="store_true", help="shorter timing (rep 30 ms)")
    parser.add_argument("--only", default="", help="substring of the shape names to run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to benchmark.")
        return 0
    torch.manual_seed(0)
    start = time.time()
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__}", end="")
    try:
        import triton

        print(f" | triton {triton.__version__}")
    except Exception:
        print(" | triton missing")
    triton_cls = backends_triton()
    backends = ([("triton", triton_cls)] if triton_cls is not None else []) + other_backends()
    rep_ms = 30 if args.quick else 100
    for shape in SHAPES:
        if args.only and args.only not in shape.name:
            continue
        try:
            run_shape(shape, backends, rep_ms, args.sweep)
        except Exception as exc:
            print(f"## {shape.name}: ERROR {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3, file=sys.stdout)
    print(f"\n# done in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
