"""Launch helpers: interpreter detection, an interpreter fix, cached device properties."""

from __future__ import annotations

import functools
import os
import warnings

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


def patch_interpreter() -> None:
    """Make Triton's CPU interpreter round and multiply 16-bit floats as a GPU does.

    Two interpreter bugs would otherwise make CPU results differ from GPU ones: it casts
    float32 to bfloat16 by truncation (GPUs round to nearest even), and its ``tl.dot``
    multiplies the raw numpy arrays, which for bfloat16 (stored as uint16 bits) is garbage.
    This changes the interpreter, never the kernels, which run the same code on either.
    A no-op unless ``TRITON_INTERPRET=1``; applied when this module is imported.
    """
    if not interpreter_requested():
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder, "octavo_patched", False):
        return
    if not all(hasattr(builder, name) for name in ("create_dot", "cast_impl")):
        warnings.warn("this Triton's interpreter has no create_dot/cast_impl to patch: bfloat16 "
                      "results under TRITON_INTERPRET=1 may differ from a GPU's", stacklevel=2)
        return
    original_dot, original_cast = builder.create_dot, builder.cast_impl

    def to_float32(handle):
        if handle.dtype.scalar == tl.bfloat16:
            bits = handle.data.astype(np.uint32) << 16
            return interpreter.TensorHandle(bits.view(np.float32), tl.float32)
        if handle.dtype.scalar == tl.float16:
            return interpreter.TensorHandle(handle.data.astype(np.float32), tl.float32)
        return handle

    def create_dot(self, a, b, d, *args, **kwargs):
        # 16-bit products are exact in float32, as tensor cores accumulate them
        return original_dot(self, to_float32(a), to_float32(b), d, *args, **kwargs)

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
            quiet_nan = (bits >> 16) | 0x40
            out = np.where(np.isnan(src.data), quiet_nan, rounded).astype(np.uint16)
            return interpreter.TensorHandle(out, tl.bfloat16)
        return original_cast(self, src, dst_type)

    builder.create_dot, builder.cast_impl = create_dot, cast_impl
    builder.octavo_patched = True


patch_interpreter()
