"""Octavo's hook specifications.

Every ``register_*`` hook receives a ``register`` callable. A plugin calls it once per thing it
provides: ``register(name, ref)`` where ``ref`` is either the class itself or a string reference
``"package.module:Attribute"`` that is imported only when first used;
``register(name, ref, override=True)`` replaces a name another plugin registered (logged). The interface each hook's
classes must implement is in ``octavo.plugins.manager.REGISTRY_HOOKS``; docs/plugins.md documents
every hook (a test checks that).
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("octavo")
hookimpl = pluggy.HookimplMarker("octavo")


class Register(Protocol):
    """The callable every ``register_*`` hook receives."""

    def __call__(self, name: str, ref: Any, override: bool = False) -> None: ...


@hookspec
def register_models(register: Register) -> None:
    """Register model classes (``octavo.modeling.CausalLM``) by HF ``architectures`` name."""


@hookspec
def register_attention_backends(register: Register) -> None:
    """Register attention backend classes (subclasses of ``octavo.attention.AttentionBackend``)."""


@hookspec
def register_layer_ops(register: Register) -> None:
    """Register providers of fast layer ops (subclasses of ``octavo.layers.layer_ops.LayerOps``)."""


@hookspec
def register_quantization_methods(register: Register) -> None:
    """Register ``QuantizationMethod`` classes by a checkpoint's ``quant_method``."""


@hookspec
def register_schedulers(register: Register) -> None:
    """Register scheduler classes (subclasses of ``octavo.engine.scheduler.Scheduler``)."""


@hookspec
def register_kv_cache_managers(register: Register) -> None:
    """Register KV cache manager classes (subclasses of ``octavo.kv_cache.KVCacheManager``)."""


@hookspec
def register_swappers(register: Register) -> None:
    """Register swapper classes (subclasses of ``octavo.kv_cache.swapper.Swapper``)."""


@hookspec
def register_weight_formats(register: Register) -> None:
    """Register ``WeightFormat`` classes by file glob (``"*.safetensors"``)."""


@hookspec
def register_platforms(register: Register) -> None:
    """Register platforms (subclasses of ``octavo.platforms.Platform``): device names that
    ``ModelSettings.device`` accepts."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to ``cli``, a click group merged into the ``octavo`` command."""
