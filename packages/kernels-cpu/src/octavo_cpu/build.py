"""Just-in-time build of the CPU kernel with ``torch.utils.cpp_extension.load``.

The first :func:`load_ops` on a machine compiles ``csrc/`` with the host C++ compiler (about
10 s on 2 cores) for the best instruction set the CPU has (``x86-64-v4`` with AVX-512,
``x86-64-v3`` with AVX2 and FMA, else the compiler's default), into a build directory named
after that level; later calls, in any process, reuse the build unless a source or flag
changed. Build ahead of time with ``python -m octavo_cpu.build``.

A build that fails (a compiler that rejects ``-march=x86-64-v4``, an unwritable build
directory, a compile error) is retried at the next lower level, down to ``generic``; if every
level fails, :func:`unavailable_reason` says why and how to fix it (logged once as a WARNING),
the backend and layer ops report themselves unsupported and the engine runs on torch.

Build directory, first match: ``$OCTAVO_CPU_BUILD_DIR``; ``$TORCH_EXTENSIONS_DIR/octavo_cpu``;
``$XDG_CACHE_HOME/octavo/cpu``; ``~/.cache/octavo/cpu`` (each with the level appended).
``OCTAVO_CPU_VERBOSE_BUILD=1`` shows the compiler commands.
"""

from __future__ import annotations

import hashlib
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

LEVELS = ("x86-64-v4", "x86-64-v3", "generic")  # best first; a failed build tries the next

_lock = threading.Lock()
_loaded = False
_failure: str | None = None  # why no level built, once every level was tried


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


def levels_to_try() -> list[str]:
    """This CPU's level and every lower one, best first."""
    return list(LEVELS[LEVELS.index(isa_level()):])


def compiler_flags(level: str | None = None) -> list[str]:
    # -fopenmp: ATen's parallel_for is OpenMP inlined into this file; it links against the
    # libgomp torch already loaded. No -ffast-math: the kernel relies on infinities.
    level = level or isa_level()
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if level != "generic":
        flags.append(f"-march={level}")
    return flags


def extension_name(level: str | None = None) -> str:
    return "octavo_cpu_kernels_" + (level or isa_level()).replace("-", "_")


def kernel_sources() -> list[str]:
    return sorted(str(p) for p in CSRC_DIR.glob("*.cpp"))


def build_directory(level: str | None = None) -> Path:
    """Where the extension for ``level`` (default: this CPU's) is built and cached."""
    if os.environ.get("OCTAVO_CPU_BUILD_DIR"):
        base = Path(os.environ["OCTAVO_CPU_BUILD_DIR"])
    elif os.environ.get("TORCH_EXTENSIONS_DIR"):
        base = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "octavo_cpu"
    else:
        cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(cache_home) / "octavo" / "cpu"
    level = level or isa_level()
    return base / f"{level}-{source_fingerprint(level)}"


def source_fingerprint(level: str) -> str:
    """A short hash of the kernel's sources and flags: two checkouts or versions of
    octavo-kernels-cpu on one machine build into their own directories, so neither loads the
    other's build (which may lack an op) nor rebuilds over it."""
    digest = hashlib.sha256(" ".join(compiler_flags(level) + [torch.__version__]).encode())
    for path in sorted(CSRC_DIR.iterdir()):
        if path.suffix in (".cpp", ".h"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


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

    Tries this CPU's level, then each lower one; raises RuntimeError with the reasons and the
    fix when none builds (and again, without rebuilding, on later calls). Thread-safe;
    concurrent processes serialize on torch's lock file in the build directory.
    """
    global _loaded, _failure
    with _lock:
        if not _loaded:
            if _failure is None:
                _failure = _build_some_level(verbose)
                if _failure is None:
                    _loaded = True
                else:
                    logger.warning("%s", _failure)
            if _failure is not None:
                raise RuntimeError(_failure)
    return torch.ops.octavo_cpu


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (no toolchain, or no level built), else None. Builds the
    kernel the first time, so a backend asking this before it is chosen falls back cleanly."""
    reason = missing_toolchain()
    if reason is not None:
        return f"octavo_cpu cannot build its kernel: {reason}"
    try:
        load_ops()
    except RuntimeError as exc:
        return str(exc)
    return None


def _build_some_level(verbose: bool | None) -> str | None:
    """Build the best level that compiles; None on success, else the message to show."""
    reason = missing_toolchain()
    if reason is not None:
        return f"octavo_cpu cannot build its kernel: {reason}"
    if verbose is None:
        verbose = os.environ.get("OCTAVO_CPU_VERBOSE_BUILD", "") not in ("", "0")
    failures: list[tuple[str, str]] = []
    for level in levels_to_try():
        problem = _build_level(level, verbose)
        if problem is None:
            if failures:
                logger.warning("octavo_cpu: built the CPU kernel for %s instead of %s (%s), so "
                               "it is slower than it could be; %s", level, isa_level(),
                               _joined(failures), _fix(failures))
            return None
        failures.append((level, problem))
        logger.info("octavo_cpu: the build for %s failed: %s", level, problem)
    return (f"octavo_cpu could not build its CPU kernel at any level ({_joined(failures)}); "
            f"the engine uses the slower torch backend instead. To fix: {_fix(failures)}")


def _build_level(level: str, verbose: bool) -> str | None:
    """Build and load the extension for ``level``; None on success, else a one-line reason."""
    from torch.utils.cpp_extension import load

    directory = build_directory(level)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError(f"{directory} is not writable")
        if not (directory / f"{extension_name(level)}.so").exists():
            logger.info("octavo_cpu: compiling the CPU kernel for %s (first use with these "
                        "sources: 10-60 s, once) into %s", level, directory)
        start = time.perf_counter()
        load(name=extension_name(level), sources=kernel_sources(),
             extra_cflags=compiler_flags(level), extra_ldflags=["-fopenmp"],
             build_directory=str(directory), is_python_module=False, verbose=verbose)
    except OSError as exc:
        return f"build directory {directory}: {type(exc).__name__}: {exc}"
    except Exception as exc:  # compiler errors arrive as RuntimeError; anything else too
        return _first_line(exc)
    logger.debug("octavo_cpu kernel (%s) loaded in %.1f s", level, time.perf_counter() - start)
    return None


def _first_line(exc: Exception) -> str:
    """The exception's first line, and the compiler's first error line if it has one."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    first = lines[0].split(": [", 1)[0] if lines else ""  # torch appends ninja's log
    summary = f"{type(exc).__name__}: {first[:200]}"
    error = next((line for line in lines if "error:" in line.lower()), None)
    return f"{summary} ({error[:300]})" if error else summary


def _joined(failures: list[tuple[str, str]]) -> str:
    return "; ".join(f"{level}: {problem}" for level, problem in failures)


def _fix(failures: list[tuple[str, str]]) -> str:
    """How to fix what failed, from the reasons."""
    hints = []
    if any(problem.startswith("build directory") for _, problem in failures):
        hints.append("set OCTAVO_CPU_BUILD_DIR to a writable folder")
    if any(level != "generic" for level, _ in failures):
        hints.append("a compiler that knows -march=x86-64-v4 / -v3 (GCC 11+, Clang 12+; pick "
                     "it with CXX=...)")
    hints.append("`OCTAVO_CPU_VERBOSE_BUILD=1 python -m octavo_cpu.build` shows the compiler's "
                 "output")
    return "; ".join(hints)


def main() -> None:
    """``python -m octavo_cpu.build``: build now and report the time and location."""
    start = time.perf_counter()
    load_ops(verbose=True)
    print(f"octavo_cpu kernel ready in {time.perf_counter() - start:.1f} s "
          f"({isa_level()}, build directory {build_directory()})")


if __name__ == "__main__":
    main()
