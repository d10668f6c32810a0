"""The plugin manager: registers core's defaults and the ``octavo`` entry points, once."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from octavo.plugins import hookspecs
from octavo.plugins.registry import PluginError, Registry, origin

if TYPE_CHECKING:
    import click

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "octavo"
ALLOWLIST_ENV = "OCTAVO_PLUGINS"

# Core's own implementations, registered exactly like third-party plugins (always loaded).
DEFAULT_PLUGINS = (
    "octavo.plugins.defaults",
    "octavo.commands",
)

# hook name -> (registry kind, interface the registered classes must subclass)
REGISTRY_HOOKS: dict[str, tuple[str, str]] = {
    "register_models": ("model", "octavo.modeling:CausalLM"),
    "register_attention_backends": ("attention backend", "octavo.attention.base:AttentionBackend"),
    "register_layer_ops": ("layer ops", "octavo.layers.layer_ops:LayerOps"),
    "register_quantization_methods": (
        "quantization method", "octavo.layers.quantization:QuantizationMethod"),
    "register_schedulers": ("scheduler", "octavo.engine.scheduler:Scheduler"),
    "register_kv_cache_managers": ("KV cache manager", "octavo.kv_cache.manager:KVCacheManager"),
    "register_swappers": ("swapper", "octavo.kv_cache.swapper:Swapper"),
    "register_weight_formats": ("weight format", "octavo.model_loader.weights:WeightFormat"),
}


@dataclass
class PluginInfo:
    """One registered plugin: its name, where it comes from and the hooks it implements."""

    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return origin(self.name, self.distribution)

    def as_dict(self) -> dict:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "hooks": self.hooks}


def allowed_plugins() -> set[str] | None:
    """The ``OCTAVO_PLUGINS`` allowlist: None when unset, else the names (empty means none)."""
    raw = os.environ.get(ALLOWLIST_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def plugin_entry_points() -> list[md.EntryPoint]:
    """Entry points of group ``octavo`` allowed by ``OCTAVO_PLUGINS``, sorted by name."""
    found = sorted(md.entry_points(group=ENTRY_POINT_GROUP),
                   key=lambda ep: (ep.name, ep.dist.name if ep.dist else ""))
    allow = allowed_plugins()
    if allow is None:
        return found
    unknown = allow - {ep.name for ep in found}
    if unknown:
        logger.warning("%s names plugins that are not installed: %s",
                       ALLOWLIST_ENV, ", ".join(sorted(unknown)))
    return [ep for ep in found if ep.name in allow]


class OctavoPluginManager:
    """Owns the pluggy manager, the plugin metadata and one registry per ``register_*`` hook.

    Nothing is imported until :meth:`load` (or any accessor) runs; it runs once. If loading
    fails, the manager is left empty, so a retry reports the same error.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self.pm = pluggy.PluginManager("octavo")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry] = {
            hook: Registry(kind, interface) for hook, (kind, interface) in REGISTRY_HOOKS.items()
        }
        self._commands: dict[str, tuple[click.Command, PluginInfo]] | None = None
        self._loaded = False

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> OctavoPluginManager:
        """Register defaults and allowed entry points, then fill the registries. Runs once."""
        with self._lock:
            if not self._loaded:
                try:
                    self._load()
                except BaseException:
                    self._clear()
                    raise
                self._loaded = True
            return self

    def _load(self) -> None:
        core_version = _version("octavo-core")
        for module_name in DEFAULT_PLUGINS:
            self._register(importlib.import_module(module_name), module_name,
                           "octavo-core", core_version)
        for ep in plugin_entry_points():
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "unknown"
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginError(f"{origin(ep.name, dist)}: entry point {ep.value!r} failed "
                                  f"to import: {type(exc).__name__}: {exc}") from exc
            self._register(module, ep.name, dist, version)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            info = self.plugins[self.pm.get_name(exc.plugin)]
            raise PluginError(f"{info.origin}: {exc}") from exc
        for hook, registry in self.registries.items():
            self._fill(hook, registry)

    def _fill(self, hook: str, registry: Registry) -> None:
        """Call every plugin's ``hook`` with a ``register`` that records the caller."""
        for info, impl in self._impls(hook):
            def register(name: str, ref: Any, _info: PluginInfo = info) -> None:
                registry.add(name, ref, _info.name, _info.distribution)

            self._call(info, impl, register=register)

    def _register(self, plugin: ModuleType, name: str, dist: str, version: str) -> None:
        if name in self.plugins:
            raise PluginError(f"plugin name {name!r} used twice: by distribution "
                              f"{self.plugins[name].distribution!r} and by {dist!r}")
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"{origin(name, dist)}: {exc}") from exc
        hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
        self.plugins[name] = PluginInfo(name, dist, version, hooks)

    def _impls(self, hook: str) -> list[tuple[PluginInfo, pluggy.HookImpl]]:
        """The implementations of ``hook``, in plugin load order (core's defaults first)."""
        by_plugin = {impl.plugin_name: impl for impl in getattr(self.pm.hook, hook).get_hookimpls()}
        return [(info, by_plugin[name]) for name, info in self.plugins.items() if name in by_plugin]

    @staticmethod
    def _call(info: PluginInfo, impl: pluggy.HookImpl, **kwargs: Any) -> None:
        """Call one plugin's hook; any failure becomes a PluginError naming the plugin."""
        try:
            impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{info.origin}: {impl.function.__name__} raised "
                              f"{type(exc).__name__}: {exc}") from exc

    # -- access -----------------------------------------------------------------------------
    def registry(self, hook: str) -> Registry:
        """The registry filled by ``hook`` (e.g. ``"register_models"``)."""
        return self.load().registries[hook]

    def commands(self) -> dict[str, tuple[click.Command, PluginInfo]]:
        """Subcommands from ``register_commands``: name -> (command, plugin). Collected once."""
        import click

        self.load()
        with self._lock:
            if self._commands is None:
                commands: dict[str, tuple[click.Command, PluginInfo]] = {}
                for info, impl in self._impls("register_commands"):
                    group = click.Group()  # each plugin adds to its own group
                    self._call(info, impl, cli=group)
                    for name, command in group.commands.items():
                        if name in commands:
                            raise PluginError(f"command {name!r} registered twice: by "
                                              f"{commands[name][1].origin} and by {info.origin}")
                        commands[name] = (command, info)
                self._commands = commands
            return self._commands


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
        manager = _manager
    return manager.load()


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests use this after changing ``OCTAVO_PLUGINS``)."""
    global _manager
    with _manager_lock:
        _manager = None


def models() -> Registry:
    """Model classes (``CausalLM``) by HF ``architectures`` name."""
    return get_plugin_manager().registry("register_models")


def attention_backends() -> Registry:
    """Attention backend classes (``AttentionBackend``) by name."""
    return get_plugin_manager().registry("register_attention_backends")


def layer_ops() -> Registry:
    """Providers of fast layer ops (``LayerOps``) by name."""
    return get_plugin_manager().registry("register_layer_ops")


def quantization_methods() -> Registry:
    """Quantization method classes (``QuantizationMethod``) by ``quant_method``."""
    return get_plugin_manager().registry("register_quantization_methods")


def schedulers() -> Registry:
    """Scheduler classes by name."""
    return get_plugin_manager().registry("register_schedulers")


def kv_cache_managers() -> Registry:
    """KV cache manager classes by name."""
    return get_plugin_manager().registry("register_kv_cache_managers")


def swappers() -> Registry:
    """Swapper classes by name."""
    return get_plugin_manager().registry("register_swappers")


def weight_formats() -> Registry:
    """Weight format classes (``WeightFormat``) by file glob."""
    return get_plugin_manager().registry("register_weight_formats")
