"""Attention benchmark: Triton paged attention vs the torch backend and PyTorch SDPA.

Usage::

    python packages/kernels-triton/benchmarks/bench_paged_attention.py [--json FILE]
    python packages/kernels-triton/benchmarks/bench_paged_attention.py --dry-run  # CPU

Shapes (bf16, 32 heads, 8 KV heads, head size 128, KV block 16): decode at batch 1 / 32 / 256
with context 512 / 4096, and one 2048-token prefill. The paged backends (Triton, torch, and
any other registered one such as ``cuda``) are timed on their whole ``forward`` (cache write
+ attention over a shuffled block table); SDPA (``scaled_dot_product_attention``) on the same
K/V gathered into contiguous, padded ``[batch, kv_heads, max_len, head]`` tensors beforehand.

GB/s is the minimum traffic (K/V read once per KV head, Q/K/V read, output written) over the
median time; "% copy" divides it by the copy bandwidth of the same device measured in the
same run (``dst.copy_(src)`` of a 1 GiB tensor, bytes read + written). "max|diff|" is the
largest difference from the torch backend's output. A failing row prints its error and the
run goes on. ``--dry-run`` runs the same code on tiny float32 shapes on the CPU under Triton's
interpreter: it checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Shape:
    name: str
    num_seqs: int
    query_len: int  # new tokens per request
    context_len: int  # seq_len incl. the new tokens (the longest, with min_context)
    min_context: int | None = None  # lengths drawn from min_context..context_len
    num_heads: int = 32
    num_kv_heads: int = 8
    head_size: int = 128
    block_size: int = 16
    dtype: torch.dtype = torch.bfloat16


GPU_SHAPES = [Shape(f"decode b{b} ctx{c}", b, 1, c) for b in (1, 32, 256) for c in (512, 4096)]
GPU_SHAPES.append(Shape("decode b256 ctx512-4096", 256, 1, 4096, min_context=512))
GPU_SHAPES.append(Shape("prefill 2048", 1, 2048, 2048))
TINY = dict(num_heads=4, num_kv_heads=2, head_size=64, block_size=16, dtype=torch.float32)
DRY_SHAPES = [Shape(f"decode b{b} ctx{c}", b, 1, c, **TINY) for b in (1, 3) for c in (40, 70)]
DRY_SHAPES.append(Shape("decode b3 ctx20-70", 3, 1, 70, min_context=20, **TINY))
DRY_SHAPES.append(Shape("prefill 48", 1, 48, 48, **TINY))


@dataclass
class Row:
    shape: str
    backend: str
    ms: float | None = None
    gbps: float | None = None
    copy_fraction: float | None = None
    tflops: float | None = None
    vs_torch: float | None = None
    vs_sdpa: float | None = None
    max_diff: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def make_inputs(shape: Shape, device: str):
    """Random Q/K/V, a random paged cache (shuffled blocks) and the batch's metadata."""
    from octavo.attention.base import AttentionMetadata

    seq_lens = seq_lens_of(shape)
    bs = shape.block_size
    blocks = [-(-s // bs) for s in seq_lens]
    num_blocks = sum(blocks) + 1
    perm = torch.randperm(num_blocks - 1, device=device).to(torch.int32) + 1
    block_tables = torch.zeros(shape.num_seqs, max(blocks), dtype=torch.int32, device=device)
    for i, chunk in enumerate(perm.split(blocks)):
        block_tables[i, : len(chunk)] = chunk
    q = shape.query_len
    positions = torch.cat([torch.arange(s - q, s, device=device) for s in seq_lens])
    seq_ids = torch.arange(shape.num_seqs, device=device).repeat_interleave(q)
    slot_mapping = block_tables[seq_ids, positions // bs].long() * bs + positions % bs
    starts = [i * q for i in range(shape.num_seqs + 1)]
    metadata = AttentionMetadata(
        slot_mapping=slot_mapping,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables, max_query_len=q, max_seq_len=max(seq_lens),
        query_start_loc_cpu=starts, seq_lens_cpu=seq_lens)
    n = starts[-1]
    h, kh, d = shape.num_heads, shape.num_kv_heads, shape.head_size
    opts = dict(device=device, dtype=shape.dtype)
    query, key, value = (torch.randn(n, heads, d, **opts) for heads in (h, kh, kh))
    key_cache = torch.randn(num_blocks, bs, kh, d, **opts)
    value_cache = torch.randn(num_blocks, bs, kh, d, **opts)
    return query, key, value, key_cache, value_cache, metadata


def seq_lens_of(shape: Shape) -> list[int]:
    if shape.min_context is None:
        return [shape.context_len] * shape.num_seqs
    gen = torch.Generator().manual_seed(shape.num_seqs)
    lens = torch.randint(shape.min_context, shape.context_len + 1, (shape.num_seqs,),
                         generator=gen)
    lens[0] = shape.context_len  # the longest is there: SDPA pads every request to it
    return lens.tolist()


def traffic(shape: Shape) -> tuple[float, float]:
    """(minimum bytes, flops): K/V read once, Q/K/V/out once; causal score + PV flops."""
    elem = torch.finfo(shape.dtype).bits // 8
    h, kh, d, q = shape.num_heads, shape.num_kv_heads, shape.head_size, shape.query_len
    seq_lens = seq_lens_of(shape)
    kv = 2 * sum(seq_lens) * kh * d * elem
    qo = shape.num_seqs * q * (2 * h + 2 * kh) * d * elem
    keys_seen = sum(q * (s - q) + q * (q + 1) / 2 for s in seq_lens)  # causal
    return kv + qo, 4.0 * h * d * keys_seen


def time_ms(fn, device: str, budget_ms: float) -> float:
    """Median milliseconds per call over five timed batches after a warm-up."""
    cuda = device == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    once_ms = max((time.perf_counter() - start) * 1e3, 1e-3)
    per_batch = max(1, min(200, int(budget_ms / 5 / once_ms)))
    samples = []
    for _ in range(5):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(per_batch):
                fn()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / per_batch)
        else:
            t0 = time.perf_counter()
            for _ in range(per_batch):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / per_batch)
    return statistics.median(samples)


def copy_bandwidth(device: str, nbytes: int, budget_ms: float) -> float:
    """GB/s of ``dst.copy_(src)``, counting the bytes read and written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, budget_ms)
    return 2 * nbytes / ms / 1e6


def padded_kv(key_cache, value_cache, metadata, shape: Shape):
    """Each request's K/V as contiguous ``[num_seqs, kv_heads, max_len, head]`` (zero-padded)
    and the boolean mask of real positions (None when every request has the longest length)."""
    from octavo.attention.torch_backend import gather_kv

    lens = metadata.seq_lens_cpu
    width = max(lens)
    k = key_cache.new_zeros(len(lens), shape.num_kv_heads, width, shape.head_size)
    v = torch.zeros_like(k)
    for i, s in enumerate(lens):
        k[i, :, :s] = gather_kv(key_cache, metadata.block_tables[i], s).transpose(0, 1)
        v[i, :, :s] = gather_kv(value_cache, metadata.block_tables[i], s).transpose(0, 1)
    if min(lens) == width:
        return k, v, None
    pos = torch.arange(width, device=k.device)
    mask = pos[None, :] < torch.tensor(lens, device=k.device)[:, None]
    return k, v, mask[:, None, None, :]


def sdpa_fn(query, k, v, mask, shape: Shape):
    """SDPA over padded K/V; GQA through ``enable_gqa`` (K/V heads expanded if unsupported)."""
    import torch.nn.functional as F

    b, q_len = shape.num_seqs, shape.query_len
    q = query.view(b, q_len, shape.num_heads, shape.head_size).transpose(1, 2)  # [B, H, q, D]
    causal = q_len > 1
    scale = shape.head_size ** -0.5

    def gqa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=scale, enable_gqa=True)
    try:
        gqa()
        return gqa, "enable_gqa"
    except Exception:  # older torch / no kernel for GQA: expand K/V to every query head
        group = shape.num_heads // shape.num_kv_heads
        ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return (lambda: F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask,
                                                       is_causal=causal, scale=scale),
                "expanded K/V")


def paged_backends(device: str, dtype: torch.dtype, head_size: int, skip: set[str]):
    """(name, class) of the Triton, torch and any other registered backend that runs here."""
    from octavo.attention.torch_backend import TorchAttentionBackend
    from octavo.plugins import attention_backends

    found = []
    try:
        from octavo_triton.backend import TritonAttentionBackend

        found.append(("triton", TritonAttentionBackend))
    except Exception as exc:
        print(f"# octavo_triton not importable: {type(exc).__name__}: {exc}")
    found.append(("torch", TorchAttentionBackend))
    try:
        registry = attention_backends()
        for name in registry:
            if name not in ("torch", "triton", *skip) and not name.startswith("example"):
                cls = registry.get(name)
                if cls.supports(device, dtype, head_size):
                    found.append((name, cls))
    except Exception as exc:
        print(f"# other backends unavailable: {type(exc).__name__}: {exc}")
    return found


def run_shape(shape: Shape, device: str, copy_gbps: float, budget_ms: float,
              skip: set[str]) -> list[Row]:
    nbytes, flops = traffic(shape)
    query, key, value, key_cache, value_cache, md = make_inputs(shape, device)
    h, kh, d = shape.num_heads, shape.num_kv_heads, shape.head_size
    rows, outputs = [], {}

    def measure(name, fn, out_of=None):
        row = Row(shape.name, name)
        try:
            out = fn()
            outputs[name] = (out_of(out) if out_of else out).float()
            row.ms = time_ms(fn, device, budget_ms)
            row.gbps = nbytes / row.ms / 1e6
            row.copy_fraction = row.gbps / copy_gbps
            row.tflops = flops / row.ms / 1e9
        except Exception as exc:  # one failing row must not stop the run
            row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            traceback.print_exc(limit=4, file=sys.stdout)
        rows.append(row)
        return row

    for name, cls in paged_backends(device, shape.dtype, d, skip):
        backend = cls(h, d, kh, d ** -0.5)
        kc, vc = key_cache.clone(), value_cache.clone()
        measure(name, lambda b=backend, kc=kc, vc=vc: b.forward(query, key, value, kc, vc, md))
        del kc, vc
    # SDPA reads the K/V the step would see: the cache after this step's write.
    try:
        from octavo.attention.torch_backend import write_kv_cache

        write_kv_cache(key, value, key_cache, value_cache, md.slot_mapping)
        k, v, mask = padded_kv(key_cache, value_cache, md, shape)
        fn, how = sdpa_fn(query, k, v, mask, shape)
        row = measure("sdpa (contiguous, padded)", fn,
                      out_of=lambda o: o.transpose(1, 2).reshape(query.shape))
        row.extra["gqa"] = how
    except Exception as exc:
        rows.append(Row(shape.name, "sdpa (contiguous, padded)",
                        error=f"{type(exc).__name__}: {exc}"))

    reference = outputs.get("torch")
    by_name = {r.backend: r for r in rows}
    torch_ms = by_name["torch"].ms if "torch" in by_name else None
    sdpa_ms = by_name["sdpa (contiguous, padded)"].ms
    for row in rows:
        if row.ms is None:
            continue
        row.vs_torch = torch_ms / row.ms if torch_ms else None
        row.vs_sdpa = sdpa_ms / row.ms if sdpa_ms else None
        if reference is not None and row.backend in outputs:
            row.max_diff = (outputs[row.backend] - reference).abs().max().item()
    return rows


def fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def print_table(rows: list[Row], copy_gbps: float, header: str) -> None:
    print(f"\n{header}; copy bandwidth {copy_gbps:,.0f} GB/s")
    print(f"| {'shape':<23} | {'backend':<26} | {'ms':>8} | {'GB/s':>7} | {'% copy':>6} | "
          f"{'TFLOP/s':>7} | {'vs torch':>8} | {'vs SDPA':>7} | {'max|diff|':>9} |")
    print("|" + "|".join("-" * w for w in (25, 28, 10, 9, 8, 9, 10, 9, 11)) + "|")
    for r in rows:
        if r.error:
            print(f"| {r.shape:<23} | {r.backend:<26} | ERROR {r.error}")
            continue
        print(f"| {r.shape:<23} | {r.backend:<26} | {fmt(r.ms, '8.3f')} | "
              f"{fmt(r.gbps, '7,.0f')} | {fmt(100 * r.copy_fraction, '5.0f', '%')} | "
              f"{fmt(r.tflops, '7.1f')} | {fmt(r.vs_torch, '7.2f', 'x')} | "
              f"{fmt(r.vs_sdpa, '6.2f', 'x')} | {fmt(r.max_diff, '9.2e')} |")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny float32 shapes on the CPU under Triton's interpreter")
    parser.add_argument("--budget-ms", type=float, default=300.0,
                        help="timing budget per measurement (default 300 ms)")
    parser.add_argument("--json", default=None, help="also write the rows here as JSON")
    parser.add_argument("--skip-backend", action="append", default=[],
                        help="leave this registered backend out (repeatable)")
    args = parser.parse_args()
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before octavo_triton imports triton
        device, shapes, copy_bytes, budget = "cpu", DRY_SHAPES, 64 << 20, 20.0
    elif torch.cuda.is_available():
        device, shapes, copy_bytes, budget = "cuda", GPU_SHAPES, 1 << 30, args.budget_ms
    else:
        print("CUDA is not available: nothing to benchmark (try --dry-run).")
        return 0
    torch.manual_seed(0)
    start = time.time()
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    try:
        import triton

        versions = f"torch {torch.__version__}, triton {triton.__version__}"
    except Exception:
        versions = f"torch {torch.__version__}, triton missing"
    copy_gbps = copy_bandwidth(device, copy_bytes, budget)
    rows: list[Row] = []
    for shape in shapes:
        try:
            rows += run_shape(shape, device, copy_gbps, budget, set(args.skip_backend))
        except Exception as exc:
            rows.append(Row(shape.name, "all", error=f"{type(exc).__name__}: {exc}"))
            traceback.print_exc(limit=4, file=sys.stdout)
        if device == "cuda":
            torch.cuda.empty_cache()
    dtype = str(shapes[0].dtype).removeprefix("torch.")
    s0 = shapes[0]
    print_table(rows, copy_gbps, f"# {name} | {versions} | {dtype}, {s0.num_heads} heads, "
                f"{s0.num_kv_heads} KV heads, head {s0.head_size}, block {s0.block_size}")
    print(f"# done in {time.time() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "versions": versions, "copy_gbps": copy_gbps,
                       "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
