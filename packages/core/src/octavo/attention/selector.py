"""Choosing an attention backend from the registry, logging why others were passed over."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from octavo.attention.base import AttentionBackend
from octavo.plugins import attention_backends

logger = logging.getLogger(__name__)


def select_attention_backend(
    device: torch.device | str, dtype: torch.dtype, head_size: int, name: str | None = None,
    preferred: Sequence[str] = (),
) -> type[AttentionBackend]:
    """The named backend (validated), else the first of ``preferred`` (the platform's order)
    that is registered and supports this, else the supported backend with the highest priority.

    A backend that outranks the chosen one but cannot run here (no CUDA and no Triton
    interpreter, an unsupported dtype or head size, a failed import) is logged with its reason.
    """
    where = f"device={torch.device(device).type}, dtype={dtype}, head_size={head_size}"
    if name is not None:
        backend = _named_backend(name, device, dtype, head_size, where)
        logger.info("attention backend %r for %s (set by --attention-backend / "
                    "OCTAVO_ATTENTION_BACKEND)", name, where)
        return backend
    backend = _preferred_backend(preferred, device, dtype, head_size, where)
    if backend is not None:
        return backend
    candidates: list[type[AttentionBackend]] = []
    passed_over: list[tuple[str, int | None, str]] = []  # (name, priority, reason)
    registry = attention_backends()
    for backend_name in registry:
        try:
            backend = registry.get(backend_name)
        except Exception as exc:  # a broken optional backend must not stop the engine
            passed_over.append((backend_name, None, f"{type(exc).__name__}: {exc}"))
            continue
        reason = backend.unsupported_reason(device, dtype, head_size)
        if reason is None:
            candidates.append(backend)
        else:
            passed_over.append((backend_name, backend.priority, reason))
    if not candidates:
        reasons = "; ".join(f"{n!r}: {r}" for n, _, r in passed_over)
        raise ValueError(f"no attention backend supports {where} ({reasons}); "
                         f"{registry.install_hint()}")
    chosen = max(candidates, key=lambda b: b.priority)
    _log_passed_over(passed_over, chosen, where)
    logger.info("attention backend %r for %s (priority %d, the highest that supports it; "
                "--attention-backend chooses another)", chosen.name, where, chosen.priority)
    return chosen


def _preferred_backend(preferred: Sequence[str], device: torch.device | str,
                       dtype: torch.dtype, head_size: int,
                       where: str) -> type[AttentionBackend] | None:
    """The first backend of the platform's ``preferred`` order that can run here, or None."""
    registry = attention_backends()
    for backend_name in preferred:
        if backend_name not in registry:
            logger.info("attention backend %r, preferred by the platform, is not installed",
                        backend_name)
            continue
        backend = registry.get(backend_name)
        reason = backend.unsupported_reason(device, dtype, head_size)
        if reason is None:
            logger.info("attention backend %r for %s (the platform's preferred order: %s)",
                        backend_name, where, ", ".join(preferred))
            return backend
        logger.info("attention backend %r, preferred by the platform, not used for %s: %s",
                    backend_name, where, reason)
    return None


def _named_backend(name: str, device: torch.device | str, dtype: torch.dtype, head_size: int,
                   where: str) -> type[AttentionBackend]:
    registry = attention_backends()
    if name not in registry:
        raise ValueError(f"unknown attention backend {name!r}; installed: "
                         f"{', '.join(registry.names())}")
    backend = registry.get(name)
    reason = backend.unsupported_reason(device, dtype, head_size)
    if reason is not None:
        raise ValueError(f"attention backend {name!r} does not support {where}: {reason}")
    return backend


def _log_passed_over(passed_over: list[tuple[str, int | None, str]],
                     chosen: type[AttentionBackend], where: str) -> None:
    """Warn about backends that failed to load; say why each higher-priority one was not used."""
    for backend_name, priority, reason in passed_over:
        if priority is None:
            logger.warning("attention backend %r could not be loaded: %s", backend_name, reason)
        elif priority > chosen.priority:
            logger.info("attention backend %r (priority %d) not used for %s: %s; "
                        "falling back to %r", backend_name, priority, where, reason, chosen.name)
