"""octavo_cuda's plugin registration and backend selection rules (no GPU needed)."""

from __future__ import annotations

import re

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
    with pytest.raises(RuntimeError, match="needs a CUDA build of torch.*: " +
                       re.escape(build.missing_toolchain())):
        CudaAttentionBackend(4, 64, 2, 0.125)


def test_an_undeclared_head_size_is_refused_before_building():
    with pytest.raises(ValueError, match=r"'cuda': head size 72 is not one of \(64, 80"):
        CudaAttentionBackend(4, 72, 2, 0.125)


def test_missing_toolchain_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(build.torch.version, "cuda", None)
    assert "is not a CUDA build" in build.missing_toolchain()
    monkeypatch.setattr(build.torch.version, "cuda", "13.0")
    monkeypatch.setattr(build.torch.cuda, "is_available", lambda: False)
    assert build.missing_toolchain().startswith("no CUDA device is visible")
    monkeypatch.setattr(build.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    assert build.missing_toolchain() == "nvcc not found (set CUDA_HOME, or put nvcc on PATH)"
    assert not build.toolchain_available()
    assert CudaAttentionBackend.unsupported_reason("cuda", torch.float16, 128) == \
        build.missing_toolchain()
    monkeypatch.setattr(build, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    assert build.missing_toolchain() is None and build.toolchain_available()


@pytest.mark.skipif(build.toolchain_available(), reason="only where CUDA is missing")
def test_selector_says_why_cuda_was_passed_over(caplog):
    reason = build.missing_toolchain()
    assert CudaAttentionBackend.unsupported_reason("cuda", torch.float16, 128) == reason
    with caplog.at_level("INFO", logger="octavo.attention.selector"):
        chosen = select_attention_backend("cuda", torch.float16, 128)
    assert chosen.priority < CudaAttentionBackend.priority
    assert f"'cuda' (priority {CudaAttentionBackend.priority}) not used" in caplog.text
    assert reason in caplog.text
    with pytest.raises(ValueError, match="'cuda' does not support .*: " + re.escape(reason)):
        select_attention_backend("cuda", torch.float16, 128, "cuda")
