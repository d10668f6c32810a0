"""Octavo's plugin system (pluggy, entry-point group ``octavo``)."""

from octavo.plugins.hookspecs import hookimpl, hookspec
from octavo.plugins.manager import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    REGISTRY_HOOKS,
    OctavoPluginManager,
    PluginInfo,
    attention_backends,
    get_plugin_manager,
    kv_cache_managers,
    layer_ops,
    models,
    platforms,
    quantization_methods,
    reset_plugin_manager,
    schedulers,
    swappers,
    weight_formats,
)
from octavo.plugins.registry import PluginError, Registry
from octavo.plugins.selection import ALLOWLIST_ENV, DENYLIST_ENV

__all__ = [
    "ALLOWLIST_ENV", "DEFAULT_PLUGINS", "DENYLIST_ENV", "ENTRY_POINT_GROUP", "REGISTRY_HOOKS",
    "OctavoPluginManager", "PluginError", "PluginInfo", "Registry", "attention_backends",
    "get_plugin_manager", "hookimpl", "hookspec", "kv_cache_managers", "layer_ops", "models",
    "platforms", "quantization_methods", "reset_plugin_manager", "schedulers", "swappers",
    "weight_formats",
]
