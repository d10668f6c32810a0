"""Octavo's plugin system (pluggy, entry-point group ``octavo``)."""

from octavo.plugins.hookspecs import hookimpl, hookspec
from octavo.plugins.manager import (
    DEFAULT_PLUGINS,
    OctavoPluginManager,
    attention_backends,
    get_plugin_manager,
    kv_cache_managers,
    models,
    quantization_methods,
    reset_plugin_manager,
    schedulers,
    swappers,
    weight_formats,
)
from octavo.plugins.registry import PluginError, Registry

__all__ = [
    "DEFAULT_PLUGINS", "OctavoPluginManager", "PluginError", "Registry", "attention_backends",
    "get_plugin_manager", "hookimpl", "hookspec", "kv_cache_managers", "models",
    "quantization_methods", "reset_plugin_manager", "schedulers", "swappers", "weight_formats",
]
