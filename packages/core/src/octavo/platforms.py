"""Platforms: the device kinds the engine runs on, registered under ``register_platforms``.

A platform answers the questions the engine asks about a device once, while it loads a model
and sizes the KV cache — never per step: is it here (:meth:`Platform.is_available`), which
``torch.device`` it is, which dtype ``dtype=auto`` means on it, how much memory is free for
the KV cache, and which attention backends it prefers. ``ModelSettings.device`` takes any
registered platform name, or ``auto``: the available platform with the highest
:attr:`Platform.priority`. Core registers ``cpu`` and ``cuda``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from octavo.cpu import fastest_cpu_dtype

AUTO = "auto"


class Platform(ABC):
    """A kind of device; built without arguments.

    Attributes:
        name: the name users pass as ``device``.
        device_type: the ``torch.device`` type its tensors live on (``"cpu"``, ``"cuda"``);
            several platforms may share one (an alias).
        priority: ``device=auto`` picks the available platform with the highest.
        attention_backends: registered backend names to use first, in this order, where they
            support the model (empty: the backends' own priorities decide).
    """

    name: ClassVar[str] = ""
    device_type: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    attention_backends: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def is_available(self) -> bool:
        """Whether this machine has the device (and the libraries to drive it)."""

    def unavailable_reason(self) -> str:
        """Why :meth:`is_available` is False, for the error message."""
        return f"platform {self.name!r} is not available on this machine"

    def device(self) -> torch.device:
        """The ``torch.device`` the model and its KV cache go to."""
        return torch.device(self.device_type)

    def default_dtype(self, config: Any) -> torch.dtype:
        """What ``dtype=auto`` means here: the checkpoint's float16/bfloat16, else bfloat16."""
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(stored, str):
            stored = getattr(torch, stored, None)
        return stored if stored in (torch.float16, torch.bfloat16) else torch.bfloat16

    def memory_info(self, device: torch.device) -> tuple[int, int] | None:
        """``(free, total)`` bytes of the device's memory, from which the KV cache takes
        ``gpu_memory_utilization``; None: the KV cache gets a fixed default size."""
        return None


class CpuPlatform(Platform):
    """The host CPU: always there; ``dtype=auto`` is what this CPU multiplies fastest; the KV
    cache gets a fixed default (RAM is shared with everything else)."""

    name = "cpu"
    device_type = "cpu"

    def is_available(self) -> bool:
        return True

    def default_dtype(self, config: Any) -> torch.dtype:
        return fastest_cpu_dtype().dtype


class CudaPlatform(Platform):
    """An NVIDIA GPU through torch's CUDA build; sizes the KV cache from free device memory."""

    name = "cuda"
    device_type = "cuda"
    priority = 10

    def is_available(self) -> bool:
        return torch.cuda.is_available()

    def unavailable_reason(self) -> str:
        return "CUDA is not available (no GPU, or a CPU-only torch build)"

    def memory_info(self, device: torch.device) -> tuple[int, int] | None:
        return torch.cuda.mem_get_info(device)


def _platforms() -> Any:
    from octavo.plugins import platforms

    return platforms()


def resolve_platform(name: str) -> Platform:
    """The platform ``name`` names (``auto``: the available one with the highest priority);
    a one-line ValueError for an unknown or unavailable one."""
    registry = _platforms()
    if name == AUTO:
        found = [registry.get(n)() for n in registry]
        available = [p for p in found if p.is_available()]
        if not available:
            raise ValueError(f"no platform is available (registered: {', '.join(registry)})")
        return max(available, key=lambda p: p.priority)
    if name not in registry:
        raise ValueError(f"unknown device {name!r} (--device, OCTAVO_DEVICE); registered "
                         f"platforms: {AUTO}, {', '.join(registry.names())}")
    platform = registry.get(name)()
    if not platform.is_available():
        raise ValueError(f"device {name!r} was requested but {platform.unavailable_reason()}")
    return platform


def platform_for(device: torch.device) -> Platform:
    """The platform of a resolved ``torch.device``: the first registered one of its type."""
    registry = _platforms()
    for name in registry:
        platform = registry.get(name)
        if platform.device_type == device.type:
            return platform()
    raise ValueError(f"no registered platform drives device type {device.type!r} "
                     f"(registered: {', '.join(registry)})")
