"""Choosing an attention backend."""

import pytest
import torch

from octavo.attention import select_attention_backend, selector
from octavo.attention.torch_backend import TorchAttentionBackend
from octavo.plugins.registry import Registry


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


class NeedsWidget(TorchAttentionBackend):
    """A backend that outranks torch but refuses to run here, saying why."""

    name = "needs-widget"
    priority = 50

    @classmethod
    def unsupported_reason(cls, device, dtype, head_size):
        return super().unsupported_reason(device, dtype, head_size) or "the widget is missing"


def only_backends(monkeypatch, *classes):
    registry = Registry("attention backend")
    for cls in classes:
        registry.add(cls.name, cls, plugin="tests", distribution="tests")
    monkeypatch.setattr(selector, "attention_backends", lambda: registry)


def test_selector_logs_and_raises_the_backends_own_reason(monkeypatch, caplog):
    only_backends(monkeypatch, TorchAttentionBackend, NeedsWidget)
    with caplog.at_level("INFO", logger="octavo.attention.selector"):
        assert select_attention_backend("cpu", torch.float32, 64) is TorchAttentionBackend
    assert "'needs-widget' (priority 50) not used" in caplog.text
    assert "the widget is missing" in caplog.text
    with pytest.raises(ValueError, match="'needs-widget' does not support .*: the widget is"):
        select_attention_backend("cpu", torch.float32, 64, "needs-widget")
    # the declared tables come first: a wrong dtype is reported as such
    assert NeedsWidget.unsupported_reason("cpu", torch.int8, 64) == "dtype torch.int8 is not supported"
    assert not NeedsWidget.supports("cpu", torch.float32, 64)


def test_overriding_supports_is_refused_at_class_definition():
    with pytest.raises(TypeError, match=r"overrides supports\(\); override unsupported_reason"):
        class Sneaky(TorchAttentionBackend):
            name = "sneaky"

            @classmethod
            def supports(cls, device, dtype, head_size):
                return False


def test_declared_head_sizes():
    class Listed(TorchAttentionBackend):
        name = "listed"
        supported_head_sizes = (64, 128)

    class UpTo(TorchAttentionBackend):
        name = "up-to"
        max_head_size = 128

    assert Listed.supports("cpu", torch.float32, 128)
    assert Listed.unsupported_reason("cpu", torch.float32, 80) == \
        "head size 80 is not one of (64, 128)"
    assert UpTo.supports("cpu", torch.float32, 1) and UpTo.supports("cpu", torch.float32, 80)
    assert UpTo.unsupported_reason("cpu", torch.float32, 256) == "head size 256 is outside 1..128"
    assert TorchAttentionBackend.supports("cpu", torch.float32, 1000)
    assert TorchAttentionBackend.unsupported_reason("cpu", torch.float32, 0) == \
        "head size 0 is not positive"
    # the constructor enforces the same tables
    with pytest.raises(ValueError, match="'listed': head size 80 is not one of"):
        Listed(4, 80, 2, 0.1)
    with pytest.raises(ValueError, match="'up-to': head size 256 is outside 1..128"):
        UpTo(4, 256, 2, 0.1)
