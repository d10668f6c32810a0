"""The plugin manager: loads core's defaults and entry points in group ``octavo`` once."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import threading
from dataclasses import dataclass, field
from types import ModuleType

import pluggy

from octavo.plugins import hookspecs
from octavo.plugins.registry import PluginError, Registry

ENTRY_POINT_GROUP = "octavo"
ALLOWLIST_ENV = "OCTAVO_PLUGINS"

# Core's own implementations, registered exactly like third-party plugins.
DEFAULT_PLUGINS = (
    "octavo.plugins.defaults",
)

# hook name -> (registry kind, interface the registered classes must subclass)
REGISTRY_HOOKS: dict[str, tuple[str, str]] = {
    "register_models": ("model", "octavo.modeling:CausalLM"),
    "register_attention_backends": ("attention backend", "octavo.attention.base:AttentionBackend"),
    "register_quantization_methods": (
        "quantization method", "octavo.layers.quantization:QuantizationMethod"),
    "register_schedulers": ("scheduler", "octavo.engine.scheduler:Scheduler"),
    "register_kv_cache_managers": ("KV cache manager", "octavo.kv_cache.manager:KVCacheManager"),
    "register_swappers": ("swapper", "octavo.kv_cache.swapper:Swapper"),
    "register_weight_formats": ("weight format", "octavo.model_loader.weights:WeightFormat"),
}


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "hooks": self.hooks}


def allowed_plugins() -> set[str] | None:
    """The ``OCTAVO_PLUGINS`` allowlist: None when unset, else the names (empty means none)."""
    raw = os.environ.get(ALLOWLIST_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


class OctavoPluginManager:
    """Owns the pluggy manager, the plugin metadata and one registry per ``register_*`` hook."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("octavo")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry] = {
            hook: Registry(kind, interface) for hook, (kind, interface) in REGISTRY_HOOKS.items()
        }
        self._loaded = False
        self._lock = threading.RLock()

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> OctavoPluginManager:
        """Register defaults and entry points, then fill the registries. Runs once."""
        with self._lock:
            if self._loaded:
                return self
            core_version = _version("octavo-core")
            for module_name in DEFAULT_PLUGINS:
                self._register(importlib.import_module(module_name), module_name,
                               "octavo-core", core_version)
            allow = allowed_plugins()
            for ep in md.entry_points(group=ENTRY_POINT_GROUP):
                if allow is not None and ep.name not in allow:
                    continue
                dist = ep.dist.name if ep.dist is not None else "unknown"
                version = ep.dist.version if ep.dist is not None else "unknown"
                try:
                    module = ep.load()
                except Exception as exc:
                    raise PluginError(
                        f"plugin {ep.name!r} (distribution {dist!r}): entry point "
                        f"{ep.value!r} failed to import: {exc}") from exc
                self._register(module, ep.name, dist, version)
            self.pm.check_pending()
            for hook, registry in self.registries.items():
                self._fill(hook, registry)
            self._loaded = True
            return self

    def _register(self, module: ModuleType, name: str, dist: str, version: str) -> None:
        if name in self.plugins:
            raise PluginError(
                f"plugin name {name!r} used twice: distributions {self.plugins[name].distribution!r} "
                f"and {dist!r}")
        try:
            self.pm.register(module, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name!r} (distribution {dist!r}): {exc}") from exc
        hooks = sorted(impl.name for impl in self.pm.get_hookcallers(module) or [])
        self.plugins[name] = PluginInfo(name, dist, version, hooks)

    def _fill(self, hook: str, registry: Registry) -> None:
        caller = getattr(self.pm.hook, hook)
        # pluggy calls impls last-registered first; register in load order instead.
        for impl in reversed(caller.get_hookimpls()):
            info = self.plugins[impl.plugin_name]

            def register(name, ref, _info=info):
                registry.add(name, ref, _info.name, _info.distribution)

            impl.function(register=register)

    # -- access -----------------------------------------------------------------------------
    def registry(self, hook: str) -> Registry:
        self.load()
        return self.registries[hook]

    def add_commands(self, cli) -> None:
        self.load()
        self.pm.hook.register_commands(cli=cli)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


_manager: OctavoPluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> OctavoPluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = OctavoPluginManager()
    return _manager.load()


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests use this after changing ``OCTAVO_PLUGINS``)."""
    global _manager
    with _manager_lock:
        _manager = None


def models() -> Registry:
    return get_plugin_manager().registry("register_models")


def attention_backends() -> Registry:
    return get_plugin_manager().registry("register_attention_backends")


def quantization_methods() -> Registry:
    return get_plugin_manager().registry("register_quantization_methods")


def schedulers() -> Registry:
    return get_plugin_manager().registry("register_schedulers")


def kv_cache_managers() -> Registry:
    return get_plugin_manager().registry("register_kv_cache_managers")


def swappers() -> Registry:
    return get_plugin_manager().registry("register_swappers")


def weight_formats() -> Registry:
    return get_plugin_manager().registry("register_weight_formats")
