"""octavo_cuda's plugin registration and backend selection rules (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from octavo.attention.selector import select_attention_backend
from octavo.plugins import attention_backends
from octavo_cuda import build
from octavo_cuda.backend import CudaAttentionBackend


def test_registered_as_cuda():
    entry = attention_backends().entry("cuda")
    assert entry.distribution == "octavo-kernels-cuda"
    assert attention_backends().get("cuda") is CudaAttentionBackend


def test_declared_support():
    assert 0 < CudaAttentionBackend.priority < 10  # above torch, below Triton until faster
    assert not CudaAttentionBackend.supports("cpu", torch.float16, 128)
    assert not CudaAttentionBackend.supports("cuda", torch.float16, 72)
    assert not CudaAttentionBackend.supports("cuda", torch.int8, 128)
    expected = build.toolchain_available()
    for head_size in (64, 80, 96, 128, 256):
        assert CudaAttentionBackend.supports("cuda", torch.bfloat16, head_size) == expected


def test_never_selected_for_cpu():
    assert select_attention_backend("cpu", torch.float32, 64) is not CudaAttentionBackend


def test_build_directory_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("OCTAVO_CUDA_BUILD_DIR", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    assert build.build_directory() == tmp_path / "ext" / "octavo_cuda"
    monkeypatch.setenv("OCTAVO_CUDA_BUILD_DIR", str(tmp_path / "own"))
    assert build.build_directory() == tmp_path / "own"
    monkeypatch.delenv("OCTAVO_CUDA_BUILD_DIR")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.build_directory() == tmp_path / "xdg" / "octavo" / "cuda"


def test_build_inputs():
    names = [p.rsplit("/", 1)[-1] for p in build.sources()]
    assert names[0] == "binding.cpp"
    assert {"api.cu", "attention_fp32.cu", "attention_fp16.cu", "attention_bf16.cu"} <= set(names)
    assert "-gencode=arch=compute_90,code=sm_90" in build.cuda_arch_flags()


@pytest.mark.skipif(build.toolchain_available(), reason="only where CUDA is missing")
def test_constructing_without_cuda_fails_clearly():
    with pytest.raises(RuntimeError, match="needs a CUDA build of torch"):
        CudaAttentionBackend(4, 64, 2, 0.125)
