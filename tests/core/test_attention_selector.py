"""Choosing an attention backend."""

import pytest
import torch

from octavo.attention import select_attention_backend
from octavo.attention.torch_backend import TorchAttentionBackend


def test_cpu_default_is_the_torch_reference():
    assert select_attention_backend("cpu", torch.float32, 64) is TorchAttentionBackend


def test_named_backend_is_validated():
    assert select_attention_backend("cpu", torch.float32, 64, "torch") is TorchAttentionBackend
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        select_attention_backend("cpu", torch.float32, 64, "nope")
    with pytest.raises(ValueError, match="does not support"):
        select_attention_backend("cpu", torch.float32, 64, "cuda")
