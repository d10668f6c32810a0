"""Launch helpers: interpreter detection, an interpreter fix, cached device properties."""

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


def triton_unavailable_reason(device: torch.device | str) -> str | None:
    """Why Triton kernels cannot run on ``device`` in this process, or None when they can."""
    device_type = torch.device(device).type
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if interpreted():
            return "Triton runs in its CPU interpreter in this process (TRITON_INTERPRET=1)"
        return None
    if device_type == "cpu":
        if not interpreter_requested():
            return ("no CUDA device and Triton's interpreter is off (set TRITON_INTERPRET=1 "
                    "before Triton is imported to run the kernels on the CPU, slowly)")
        if not interpreted():
            return ("TRITON_INTERPRET=1 was set after the kernels were compiled for the GPU; "
                    "set it before Triton is imported")
        return None
    return f"Triton kernels do not run on device {device_type!r}"


@functools.lru_cache(maxsize=16)
def multiprocessor_count(device_index: int) -> int:
    """Number of SMs of a CUDA device (cached: the query is slow)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def patch_interpreter_dot() -> None:
    """Make the interpreter's ``tl.dot`` exact for 16-bit floats; a no-op off the interpreter.

    The interpreter multiplies the raw numpy arrays, and it stores bfloat16 as uint16 bits,
    so a bfloat16 ``tl.dot`` returns garbage there (float16 is right, but slow without BLAS).
    Widening both operands to float32 first gives the exact products a GPU's tensor cores
    accumulate in float32. This changes the interpreter, not the kernels: they run the same
    ``tl.dot`` on either.
    """
    if not interpreter_requested():
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "octavo_widened", False):
        return
    original = builder.create_dot

    def widen(handle):
        if handle.dtype.scalar == tl.bfloat16:
            bits = handle.data.astype(np.uint32) << 16
            return interpreter.TensorHandle(bits.view(np.float32), tl.float32)
        if handle.dtype.scalar == tl.float16:
            return interpreter.TensorHandle(handle.data.astype(np.float32), tl.float32)
        return handle

    def create_dot(self, a, b, d, *args, **kwargs):
        return original(self, widen(a), widen(b), d, *args, **kwargs)

    create_dot.octavo_widened = True
    builder.create_dot = create_dot
