"""What this CPU does fast, found at run time: its model, its notable instruction sets, and the
dtype whose dense products it runs fastest.

The machines Octavo runs on differ (an AVX2-only AMD where bfloat16 products are about 100x
slower than float32; an Intel Xeon with AMX where they are 2.5-6x faster), so nothing here is
assumed: ``dtype=auto`` on the CPU asks :func:`fastest_cpu_dtype`, which looks at the flags and
then times the product itself.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# The instruction-set extensions that decide which kernels and dtypes are fast.
NOTABLE_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16", "amx_int8")
# Any of these gives bfloat16 products a hardware path (dot products or tiles).
BF16_PRODUCT_FLAGS = ("amx_bf16", "avx512_bf16")
# bfloat16 must beat float32 by this much to be chosen: it also costs accuracy.
BF16_MIN_SPEEDUP = 1.2
_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` where /proc/cpuinfo is missing)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`NOTABLE_CPU_FLAGS` this CPU has."""
    present = set((_cpuinfo_field("flags") or "").split())
    return [flag for flag in NOTABLE_CPU_FLAGS if flag in present]


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype ``auto`` means on this CPU, and why."""

    dtype: torch.dtype
    reason: str


@cache
def fastest_cpu_dtype() -> DtypeChoice:
    """bfloat16 where this CPU has bf16 product instructions, oneDNN can use them and a
    measured decode-sized product runs at least :data:`BF16_MIN_SPEEDUP` times faster than
    float32; float32 otherwise. Decided once per process and logged."""
    choice = _choose_cpu_dtype()
    logger.info("dtype auto on this CPU (%s): %s, %s", cpu_model(),
                str(choice.dtype).removeprefix("torch."), choice.reason)
    return choice


def _choose_cpu_dtype() -> DtypeChoice:
    hardware = [flag for flag in BF16_PRODUCT_FLAGS if flag in cpu_flags()]
    if not hardware:
        return DtypeChoice(torch.float32, "no bfloat16 product instructions "
                                          f"({' or '.join(BF16_PRODUCT_FLAGS)})")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return DtypeChoice(torch.float32, f"{'+'.join(hardware)} present but this torch's "
                                          "oneDNN has no bfloat16 path here")
    speedup = measure_bf16_speedup()
    verdict = "at least" if speedup >= BF16_MIN_SPEEDUP else "below"
    dtype = torch.bfloat16 if speedup >= BF16_MIN_SPEEDUP else torch.float32
    return DtypeChoice(dtype, f"{'+'.join(hardware)}: bfloat16 products measured {speedup:.2f}x "
                              f"float32, {verdict} the {BF16_MIN_SPEEDUP}x needed")


def measure_bf16_speedup(rows: int = 16, features: int = 1024, repeats: int = 20) -> float:
    """float32 time over bfloat16 time of one packed ``[rows, features] x [features,
    features]`` product, oneDNN's path for both (best of ``repeats``, a few milliseconds)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(features, features, generator=generator)
    x = torch.randn(rows, features, generator=generator)
    return _best_time(x, weight, repeats) / _best_time(x.bfloat16(), weight.bfloat16(), repeats)


def _best_time(x: torch.Tensor, weight: torch.Tensor, repeats: int) -> float:
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, x.shape[0])
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 2):  # the first calls pay for oneDNN's primitive creation
            started = time.perf_counter()
            torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            best = min(best, time.perf_counter() - started)
    return best
