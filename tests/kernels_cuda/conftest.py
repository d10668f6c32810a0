"""Fixtures for the octavo_cuda tests: a CPU simulator of the CUDA kernels.

``cuda_sim`` compiles the kernels' own source (``octavo_cuda/csrc``) with g++ against the
simulator runtime in ``sim/`` and drives it through ctypes, so the kernel logic is checked
against the torch reference on machines without a GPU. It needs g++ and the CUDA headers
(``cuda_fp16.h``); without them its tests skip. The library is cached by source hash under
``$XDG_CACHE_HOME/octavo/cuda-sim`` (or ``~/.cache``).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import octavo_cuda
from octavo.attention.base import AttentionMetadata

SIM_DIR = Path(__file__).resolve().parent / "sim"
CSRC_DIR = Path(octavo_cuda.__file__).resolve().parent / "csrc"
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
PLAN_KEYS = ("heads_per_block", "queries_per_block", "head_chunks", "num_q_tiles",
             "num_splits", "partition_size", "tc", "tc_heads_per_block", "tc_queries_per_block",
             "tc_head_chunks", "tc_q_tiles")


def cuda_include_dir() -> Path | None:
    """A directory holding cuda_fp16.h: $CUDA_HOME, $CUDA_PATH, nvcc's install, /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for home in candidates:
        if home and (Path(home) / "include" / "cuda_fp16.h").exists():
            return Path(home) / "include"
    return None


def build_simulator() -> Path:
    """Compile (or reuse) the simulator library; returns its path."""
    include = cuda_include_dir()
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if include is None or cxx is None:
        pytest.skip("the kernel simulator needs g++ and the CUDA headers (cuda_fp16.h)")
    flags = ["-std=c++20", "-O1", "-fPIC", "-shared", "-fno-strict-aliasing", "-Wall",
             "-Wno-unknown-pragmas", "-U_FORTIFY_SOURCE", "-DOCTAVO_CUDA_SIM", f"-I{include}", f"-I{CSRC_DIR}",
             f"-I{SIM_DIR}"]
    digest = hashlib.sha256(" ".join([cxx, *flags]).encode())
    for path in sorted([*CSRC_DIR.glob("*"), *SIM_DIR.glob("*")]):
        if path.suffix in (".h", ".cuh", ".cu", ".cpp"):
            digest.update(path.name.encode() + path.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "octavo" / "cuda-sim"
    lib = cache / f"liboctavo_cuda_sim-{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, *flags, str(SIM_DIR / "sim_main.cpp"), "-o", str(tmp)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"simulator build failed:\n{' '.join(cmd)}\n{result.stderr}")
        os.replace(tmp, lib)
    return lib


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) spanned by a strided tensor."""
    if t.numel() == 0:
        return t.data_ptr(), 0
    span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1
    return t.data_ptr(), span * t.element_size()


class KernelSimulator:
    """The octavo_cuda kernels run by the CPU simulator, on CPU tensors."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        i32, i64, f32, ptr = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
        self.lib.octsim_reset.argtypes = [i32]
        self.lib.octsim_register.argtypes = [ptr, i64]
        self.lib.octsim_reshape_and_cache.restype = ctypes.c_char_p
        self.lib.octsim_reshape_and_cache.argtypes = [ptr] * 5 + [i64] * 5 + [i32] * 4
        self.lib.octsim_paged_attention.restype = ctypes.c_char_p
        self.lib.octsim_paged_attention.argtypes = (
            [ptr] * 8 + [i64] * 7 + [i32] * 9 + [f32, f32, i32, i32, i32, ctypes.POINTER(i64)])

    def _register(self, *tensors: torch.Tensor | None, num_sms: int = 132) -> None:
        self.lib.octsim_reset(num_sms)
        for t in tensors:
            if t is not None:
                self.lib.octsim_register(*_extent(t))

    def reshape_and_cache(self, key, value, key_cache, value_cache, slot_mapping) -> None:
        assert key.stride(2) == 1 and key.stride(1) == key.shape[2]
        assert value.stride(2) == 1 and value.stride(1) == value.shape[2]
        self._register(key, value, key_cache, value_cache, slot_mapping)
        num_blocks, block_size, num_kv_heads, head_size = key_cache.shape
        err = self.lib.octsim_reshape_and_cache(
            key.data_ptr(), value.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(),
            slot_mapping.data_ptr(), key.stride(0), value.stride(0), key_cache.stride(0),
            key_cache.stride(1), num_blocks * block_size,
            min(key.shape[0], slot_mapping.shape[0]), num_kv_heads * head_size, block_size,
            DTYPE_CODES[key_cache.dtype])
        if err:
            raise RuntimeError(err.decode())

    def paged_attention(
        self,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        *,
        alibi_slopes: torch.Tensor | None = None,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
        partition_size: int = 0,
        tensor_cores: bool = True,
        num_sms: int = 132,
    ) -> tuple[torch.Tensor, dict[str, int]]:
        """Returns the output (unwritten rows stay NaN) and the launch plan."""
        assert query.stride(2) == 1
        out = torch.full(query.shape, math.nan, dtype=query.dtype)
        block_tables = metadata.block_tables.contiguous()
        seq_lens = metadata.seq_lens.contiguous()
        starts = metadata.query_start_loc.contiguous()
        slopes = None if alibi_slopes is None else alibi_slopes.float().contiguous()
        self._register(query, key_cache, value_cache, block_tables, seq_lens, starts, slopes, out,
                       num_sms=num_sms)
        num_blocks, block_size, num_kv_heads, head_size = key_cache.shape
        plan = (ctypes.c_int64 * len(PLAN_KEYS))()
        err = self.lib.octsim_paged_attention(
            out.data_ptr(), query.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(),
            block_tables.data_ptr(), seq_lens.data_ptr(), starts.data_ptr(),
            None if slopes is None else slopes.data_ptr(),
            query.stride(0), query.stride(1), out.stride(0), out.stride(1), key_cache.stride(0),
            key_cache.stride(1), block_tables.stride(0), query.shape[0], metadata.num_seqs,
            query.shape[1], num_kv_heads, head_size, block_size, metadata.max_query_len,
            metadata.max_seq_len, int(sliding_window or 0), scale, float(logits_soft_cap or 0.0),
            DTYPE_CODES[query.dtype], partition_size, int(tensor_cores), plan)
        if err:
            raise RuntimeError(err.decode())
        return out, dict(zip(PLAN_KEYS, plan))


@pytest.fixture(scope="session")
def cuda_sim() -> KernelSimulator:
    return KernelSimulator(build_simulator())
