"""The engine's named components, checked before the model loads and logged with why.

Names are taken exactly as given (a plugin's ``"MyScheduler"`` is not lowercased); an unknown
one is a one-line ValueError listing what is installed, which the CLI prints as a usage error.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from octavo.platforms import AUTO
from octavo.plugins import attention_backends, kv_cache_managers, platforms, schedulers

if TYPE_CHECKING:
    from octavo.engine.builder import EngineConfig
    from octavo.plugins import Registry

logger = logging.getLogger("octavo.engine")


def _check(registry: Registry, name: str, option: str) -> None:
    if name not in registry:
        raise ValueError(f"unknown {registry.kind} {name!r} (--{option.replace('_', '-')}, "
                         f"OCTAVO_{option.upper()}); installed: {', '.join(registry.names())}")


def _why(settings, option: str) -> str:
    if option in settings.model_fields_set:
        return f"set by --{option.replace('_', '-')} / OCTAVO_{option.upper()}"
    return f"the default; --{option.replace('_', '-')} chooses another"


def check_component_names(config: EngineConfig) -> None:
    """Raise ValueError for an unknown device (platform), attention backend, scheduler or KV
    cache manager; log the scheduler and cache manager chosen (the backend is chosen, and
    logged, at load)."""
    if config.model.device != AUTO:
        _check(platforms(), config.model.device, "device")
    if config.model.attention_backend is not None:
        _check(attention_backends(), config.model.attention_backend, "attention_backend")
    choices = ((schedulers(), config.scheduler, "scheduler"),
               (kv_cache_managers(), config.cache, "kv_cache_manager"))
    for registry, settings, option in choices:
        _check(registry, getattr(settings, option), option)
    for registry, settings, option in choices:
        name = getattr(settings, option)
        entry = registry.entry(name)
        logger.info("%s %r from %s (%s)", registry.kind, name, entry.distribution,
                    _why(settings, option))
