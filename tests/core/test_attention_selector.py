"""Choosing an attention backend."""

import pytest
import torch

from octavo.attention import select_attention_backend
from octavo.attention.torch_backend import TorchAttentionBackend


def test_cpu_default_is_the_cpu_kernel_else_the_torch_reference():
    chosen = select_attention_backend("cpu", torch.float32, 64)
    try:
        from octavo_cpu.backend import CpuAttentionBackend
    except ImportError:  # octavo-kernels-cpu not installed
        assert chosen is TorchAttentionBackend
        return
    usable = CpuAttentionBackend.supports("cpu", torch.float32, 64)
    assert chosen is (CpuAttentionBackend if usable else TorchAttentionBackend)


def test_named_backend_is_validated():
    assert select_attention_backend("cpu", torch.float32, 64, "torch") is TorchAttentionBackend
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        select_attention_backend("cpu", torch.float32, 64, "nope")
    with pytest.raises(ValueError, match="does not support"):
        select_attention_backend("cpu", torch.float32, 64, "cuda")


def test_a_backend_is_refused_a_feature_it_does_not_support():
    class NoAlibi(TorchAttentionBackend):
        name = "no-alibi"
        supports_alibi = False

    NoAlibi(4, 8, 2, 0.3, sliding_window=4)  # other features stay allowed
    with pytest.raises(ValueError, match="'no-alibi' does not support alibi"):
        NoAlibi(4, 8, 2, 0.3, alibi_slopes=torch.ones(4))
