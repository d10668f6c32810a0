"""Choosing an attention backend from the registry."""

from __future__ import annotations

import logging

import torch

from octavo.attention.base import AttentionBackend
from octavo.plugins import attention_backends

logger = logging.getLogger(__name__)


def select_attention_backend(
    device: torch.device | str, dtype: torch.dtype, head_size: int, name: str | None = None
) -> type[AttentionBackend]:
    """The named backend (validated), else the supported backend with the highest priority."""
    registry = attention_backends()
    if name is not None:
        if name not in registry:
            raise ValueError(f"unknown attention backend {name!r}; installed: "
                             f"{', '.join(registry.names())}")
        backend = registry.get(name)
        if not backend.supports(device, dtype, head_size):
            raise ValueError(
                f"attention backend {name!r} does not support device={torch.device(device).type}, "
                f"dtype={dtype}, head_size={head_size}")
        return backend
    candidates = []
    for backend_name in registry:
        try:
            backend = registry.get(backend_name)
        except Exception as exc:  # a broken optional backend must not stop the engine
            logger.warning("skipping attention backend %r: %s", backend_name, exc)
            continue
        if backend.supports(device, dtype, head_size):
            candidates.append(backend)
    if not candidates:
        raise ValueError(f"no attention backend supports device={device}, dtype={dtype}, "
                         f"head_size={head_size}")
    return max(candidates, key=lambda b: b.priority)
