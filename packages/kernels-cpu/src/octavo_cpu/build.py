"""Just-in-time build of the CPU kernel with ``torch.utils.cpp_extension.load``.

The first :func:`load_ops` on a machine compiles ``csrc/`` with the host C++ compiler (about
10 s on 2 cores) for the best instruction set the CPU has (``x86-64-v4`` with AVX-512,
``x86-64-v3`` with AVX2 and FMA, else the compiler's default), into a build directory named
after that level; later calls, in any process, reuse the build unless a source or flag
changed. Build ahead of time with ``python -m octavo_cpu.build``.

Build directory, first match: ``$OCTAVO_CPU_BUILD_DIR``; ``$TORCH_EXTENSIONS_DIR/octavo_cpu``;
``$XDG_CACHE_HOME/octavo/cpu``; ``~/.cache/octavo/cpu`` (each with the level appended).
``OCTAVO_CPU_VERBOSE_BUILD=1`` shows the compiler commands.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CSRC_DIR = Path(__file__).resolve().parent / "csrc"

_lock = threading.Lock()
_loaded = False


@cache
def isa_level() -> str:
    """``x86-64-v4``, ``x86-64-v3`` or ``generic``: what this CPU runs, from /proc/cpuinfo."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "generic"
    try:
        flags = next((line.split(":", 1)[1].split()
                      for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return "generic"
    if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= set(flags):
        return "x86-64-v4"
    if {"avx2", "fma", "bmi2", "f16c"} <= set(flags):
        return "x86-64-v3"
    return "generic"


def compiler_flags() -> list[str]:
    # -fopenmp: ATen's parallel_for is OpenMP inlined into this file; it links against the
    # libgomp torch already loaded. No -ffast-math: the kernel relies on infinities.
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if isa_level() != "generic":
        flags.append(f"-march={isa_level()}")
    return flags


def extension_name() -> str:
    return "octavo_cpu_kernels_" + isa_level().replace("-", "_")


def build_directory() -> Path:
    """Where the extension is built and cached."""
    if os.environ.get("OCTAVO_CPU_BUILD_DIR"):
        base = Path(os.environ["OCTAVO_CPU_BUILD_DIR"])
    elif os.environ.get("TORCH_EXTENSIONS_DIR"):
        base = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "octavo_cpu"
    else:
        cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(cache_home) / "octavo" / "cpu"
    return base / isa_level()


def missing_toolchain() -> str | None:
    """Why the kernel cannot be built here (no C++ compiler, no ninja), else None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} is not on PATH; set CXX)"
    try:
        from torch.utils.cpp_extension import verify_ninja_availability

        verify_ninja_availability()
    except (ImportError, RuntimeError):
        return "ninja is not installed (pip install ninja)"
    return None


def load_ops(verbose: bool | None = None) -> Any:
    """Build (first time on this machine) and load the kernel; returns ``torch.ops.octavo_cpu``.

    Thread-safe; concurrent processes serialize on torch's lock file in the build directory.
    """
    global _loaded
    with _lock:
        if not _loaded:
            reason = missing_toolchain()
            if reason is not None:
                raise RuntimeError(f"octavo_cpu cannot build its kernel: {reason}")
            from torch.utils.cpp_extension import load

            if verbose is None:
                verbose = os.environ.get("OCTAVO_CPU_VERBOSE_BUILD", "") not in ("", "0")
            directory = build_directory()
            directory.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            load(name=extension_name(), sources=sorted(str(p) for p in CSRC_DIR.glob("*.cpp")),
                 extra_cflags=compiler_flags(), extra_ldflags=["-fopenmp"],
                 build_directory=str(directory), is_python_module=False, verbose=verbose)
            logger.debug("octavo_cpu kernel (%s) loaded in %.1f s", isa_level(),
                         time.perf_counter() - start)
            _loaded = True
    return torch.ops.octavo_cpu


def main() -> None:
    """``python -m octavo_cpu.build``: build now and report the time and location."""
    start = time.perf_counter()
    load_ops(verbose=True)
    print(f"octavo_cpu kernel ready in {time.perf_counter() - start:.1f} s "
          f"({isa_level()}, build directory {build_directory()})")


if __name__ == "__main__":
    main()
