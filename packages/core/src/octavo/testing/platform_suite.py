"""Conformance suite for platforms (the device kinds ``device`` names); a platform plugin
subclasses it.

The tests check what the engine asks a :class:`~octavo.platforms.Platform` while it loads a
model: it is built without arguments; ``is_available()`` is a bool, and an unavailable platform
explains itself in one line; where it is available, ``device()`` is a ``torch.device`` of its
``device_type`` that holds tensors, ``default_dtype(config)`` a floating-point dtype a product
runs in on that device, and ``memory_info(device)`` None or ``(free, total)`` with
``0 <= free <= total``; its preferred attention backends are names. Usage::

    from octavo.testing.platform_suite import PlatformSuite

    class TestMyDevice(PlatformSuite):
        registered_name = "my-device"
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from octavo.platforms import Platform
from octavo.testing.suite import ConformanceSuite

__all__ = ["PlatformSuite"]


class PlatformSuite(ConformanceSuite):
    """Conformance tests for a platform. Tests that need the device skip where
    ``is_available()`` is False (a CUDA platform on a CPU machine)."""

    registry_hook = "register_platforms"

    def make_platform(self) -> Platform:
        return self.implementation()()

    def available(self) -> Platform:
        platform = self.make_platform()
        if not platform.is_available():
            pytest.skip(f"{self.registered_name!r} is not available here: "
                        f"{platform.unavailable_reason()}")
        return platform

    def test_is_a_platform(self) -> None:
        platform = self.make_platform()
        assert isinstance(platform, Platform)
        assert platform.name == self.registered_name, "name is the registered name"
        assert isinstance(platform.device_type, str) and platform.device_type
        assert isinstance(platform.priority, int)
        assert all(isinstance(n, str) for n in platform.attention_backends)
        assert isinstance(platform.is_available(), bool)

    def test_unavailable_reason_is_one_line(self) -> None:
        reason = self.make_platform().unavailable_reason()
        assert isinstance(reason, str) and reason and "\n" not in reason

    def test_device_holds_tensors(self) -> None:
        platform = self.available()
        device = platform.device()
        assert isinstance(device, torch.device) and device.type == platform.device_type
        x = torch.arange(8, dtype=torch.float32, device=device)
        assert x.device.type == platform.device_type and float(x.sum()) == 28.0

    @pytest.mark.parametrize("stored", [None, "float16", "bfloat16", "float32"])
    def test_default_dtype_is_a_float_dtype_the_device_multiplies_in(self, stored) -> None:
        platform = self.available()
        dtype = platform.default_dtype(SimpleNamespace(dtype=stored))
        assert isinstance(dtype, torch.dtype) and dtype.is_floating_point
        a = torch.ones(4, 4, dtype=dtype, device=platform.device())
        assert float((a @ a).sum()) == 64.0

    def test_memory_info(self) -> None:
        platform = self.available()
        memory = platform.memory_info(platform.device())
        if memory is not None:
            free, total = memory
            assert 0 <= free <= total and total > 0
