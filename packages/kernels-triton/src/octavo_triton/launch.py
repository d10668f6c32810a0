"""Launch helpers: interpreter detection and cached device properties."""

from __future__ import annotations

import functools
import os

import torch


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set (Triton's CPU interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=1)
def interpreted() -> bool:
    """Whether this process's Triton kernels run in the interpreter.

    Triton reads ``TRITON_INTERPRET`` when a ``@triton.jit`` function is defined, so the answer
    is fixed once this package's kernels are imported.
    """
    from octavo_triton.cache_kernels import _reshape_and_cache_kernel

    return type(_reshape_and_cache_kernel).__name__ == "InterpretedFunction"


@functools.lru_cache(maxsize=16)
def multiprocessor_count(device_index: int) -> int:
    """Number of SMs of a CUDA device (cached: the query is slow)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count
