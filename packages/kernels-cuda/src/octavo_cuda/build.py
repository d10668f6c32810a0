"""Just-in-time build of the CUDA kernels with ``torch.utils.cpp_extension.load``.

The first :func:`load_ops` in an environment compiles ``csrc/`` with nvcc (about a minute on a
16-core machine) into the build directory and loads it; later calls, in any process, reuse
that build unless a source or flag changed (ninja rebuilds only what changed). Build ahead of
time with ``python -m octavo_cuda.build``.

Build directory, first match: ``$OCTAVO_CUDA_BUILD_DIR``; ``$TORCH_EXTENSIONS_DIR/octavo_cuda``;
``$XDG_CACHE_HOME/octavo/cuda``; ``~/.cache/octavo/cuda``. ``OCTAVO_CUDA_VERBOSE_BUILD=1``
shows the compiler commands; ``MAX_JOBS`` limits the parallel compiles (torch's variable).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

EXTENSION_NAME = "octavo_cuda_kernels"
CSRC_DIR = Path(__file__).resolve().parent / "csrc"
BASE_ARCH = (9, 0)  # Hopper is always built; the current device's arch is added.

_lock = threading.Lock()
_loaded = False


def build_directory() -> Path:
    """Where the extension is built and cached."""
    if os.environ.get("OCTAVO_CUDA_BUILD_DIR"):
        return Path(os.environ["OCTAVO_CUDA_BUILD_DIR"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "octavo_cuda"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "octavo" / "cuda"


def sources() -> list[str]:
    """The binding and the CUDA translation units, in a stable order."""
    return [str(CSRC_DIR / "binding.cpp")] + sorted(str(p) for p in CSRC_DIR.glob("*.cu"))


def find_nvcc() -> str | None:
    """nvcc as torch's extension builder will find it (CUDA_HOME, PATH, /usr/local/cuda)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        path = Path(home) / "bin" / "nvcc"
        return str(path) if path.exists() else None
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


def missing_toolchain() -> str | None:
    """What the build lacks (a CUDA build of torch, a CUDA device, nvcc), or None."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    if find_nvcc() is None:
        return "nvcc not found (set CUDA_HOME, or put nvcc on PATH)"
    return None


def toolchain_available() -> bool:
    """True when torch has CUDA and a CUDA device and nvcc is installed."""
    return missing_toolchain() is None


def cuda_arch_flags() -> list[str]:
    """``-gencode`` flags for sm_90 plus every visible device's architecture."""
    archs = {BASE_ARCH}
    if torch.cuda.is_available():
        archs |= {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"
            for major, minor in sorted(archs)]


def extra_cuda_cflags() -> list[str]:
    # torch adds its own -std and --expt-relaxed-constexpr; repeating them upsets nvcc.
    return ["-O3", *cuda_arch_flags()]


def load_ops(verbose: bool | None = None) -> Any:
    """Build (first time) and load the kernels; returns ``torch.ops.octavo_cuda``.

    Thread-safe; concurrent processes serialize on torch's lock file in the build directory.
    """
    global _loaded
    with _lock:
        if not _loaded:
            missing = missing_toolchain()
            if missing is not None:
                raise RuntimeError(
                    "octavo_cuda needs a CUDA build of torch, a CUDA device and nvcc: "
                    f"{missing}")
            from torch.utils.cpp_extension import load

            if verbose is None:
                verbose = os.environ.get("OCTAVO_CUDA_VERBOSE_BUILD", "") not in ("", "0")
            directory = build_directory()
            directory.mkdir(parents=True, exist_ok=True)
            load(
                name=EXTENSION_NAME,
                sources=sources(),
                extra_include_paths=[str(CSRC_DIR)],
                extra_cflags=["-O3"],
                extra_cuda_cflags=extra_cuda_cflags(),
                build_directory=str(directory),
                is_python_module=False,
                verbose=verbose,
            )
            _loaded = True
    return torch.ops.octavo_cuda


def main() -> None:
    """``python -m octavo_cuda.build``: build now and report the time and location."""
    start = time.perf_counter()
    load_ops(verbose=True)
    print(f"octavo_cuda kernels ready in {time.perf_counter() - start:.1f} s "
          f"(build directory {build_directory()})")


if __name__ == "__main__":
    main()
