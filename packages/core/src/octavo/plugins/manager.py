"""The plugin manager: registers core's defaults and the ``octavo`` entry points, once."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from octavo.plugins import hookspecs
from octavo.plugins.registry import PluginError, Registry, origin
from octavo.plugins.selection import DENYLIST_ENV, read_selection, split_entry_points

if TYPE_CHECKING:
    import click

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "octavo"

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
    "register_platforms": ("platform", "octavo.platforms:Platform"),
}

# hook -> the distribution to name when its registry is empty ("pip install ...")
PROVIDERS: dict[str, str] = {
    "register_models": "octavo-models",
    "register_weight_formats": "octavo-models",
    "register_quantization_methods": "octavo-quant",
    "register_attention_backends": "octavo-kernels-cpu, octavo-kernels-triton or "
                                   "octavo-kernels-cuda",
}

LOADED, FAILED, DISABLED = "loaded", "failed", "disabled"


@dataclass
class PluginInfo:
    """One plugin: its name, where it comes from, the hooks it implements, what it registered
    (names per hook; ``register_commands`` once the commands are collected) and its status
    (``loaded``, ``failed`` or ``disabled``, with the reason)."""

    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    status: str = LOADED
    reason: str | None = None

    @property
    def origin(self) -> str:
        return origin(self.name, self.distribution)

    def as_dict(self) -> dict:
        data = {"name": self.name, "distribution": self.distribution, "version": self.version,
                "status": self.status, "hooks": self.hooks, "registered": self.registered}
        if self.reason is not None:
            data["reason"] = self.reason
        return data


def discover_plugins() -> tuple[list[md.EntryPoint], list[tuple[md.EntryPoint, str]]]:
    """Entry points of group ``octavo`` sorted by name: ``(enabled, [(disabled, why), ...])``
    by ``OCTAVO_PLUGINS`` and ``OCTAVO_DISABLE_PLUGINS``."""
    found = sorted(md.entry_points(group=ENTRY_POINT_GROUP),
                   key=lambda ep: (ep.name, ep.dist.name if ep.dist else ""))
    return split_entry_points(found, read_selection())


@dataclass
class _Call:
    """One ``register(name, ref, override)`` call, staged until its plugin is known good."""

    hook: str
    name: Any
    ref: Any
    override: bool


class OctavoPluginManager:
    """Owns the pluggy manager, the plugin metadata and one registry per ``register_*`` hook.

    Nothing is imported until :meth:`load` (or any accessor) runs; it runs once. A plugin that
    fails (its module does not import, a hook is unknown or raises, it registers a malformed or
    duplicate name) is skipped whole, logged as a WARNING and kept in :attr:`failed`; plugins
    left out by the allow/denylist are kept in :attr:`disabled`. Only a failure of core's own
    defaults makes loading raise (and then a retry reports the same error).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self.pm = pluggy.PluginManager("octavo")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.failed: dict[str, PluginInfo] = {}
        self.disabled: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry] = {
            hook: Registry(kind, interface, provider=PROVIDERS.get(hook))
            for hook, (kind, interface) in REGISTRY_HOOKS.items()
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
        enabled, disabled = discover_plugins()
        for ep, why in disabled:
            info = _info(ep)
            info.status, info.reason = DISABLED, why
            self.disabled.setdefault(ep.name, info)
        for ep in enabled:
            self._load_entry_point(ep)
        self._check_pending()
        self._fill_registries()

    def _load_entry_point(self, ep: md.EntryPoint) -> None:
        info = _info(ep)
        try:
            module = ep.load()
        except Exception as exc:
            self._fail(info, f"entry point {ep.value!r} failed to import: "
                             f"{type(exc).__name__}: {exc}")
            return
        try:
            self._register(module, info.name, info.distribution, info.version)
        except PluginError as exc:
            self._fail(info, str(exc))

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

    def _fail(self, info: PluginInfo, reason: str) -> None:
        """Skip a broken plugin: unregister it, log why and keep it in ``failed``."""
        reason = reason.removeprefix(info.origin).lstrip(": ")
        if info.name in DEFAULT_PLUGINS:
            raise PluginError(f"{info.origin}: {reason}")
        if self.plugins.get(info.name) is info:
            self.pm.unregister(name=info.name)
            del self.plugins[info.name]
        info.status, info.reason, info.registered = FAILED, reason, {}
        self.failed.setdefault(info.name, info)
        logger.warning("%s is skipped: %s (set %s=%s to silence this)", info.origin, reason,
                       DENYLIST_ENV, info.name)

    def _check_pending(self) -> None:
        """pluggy's check: a hook implementation that matches no hook fails its plugin."""
        while True:
            try:
                self.pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                self._fail(self.plugins[self.pm.get_name(exc.plugin)], str(exc))

    def _fill_registries(self) -> None:
        """Every plugin's registrations, plugin by plugin in load order; then the overrides,
        so an override wins whichever plugin it sorts after."""
        staged = {name: calls for name, info in list(self.plugins.items())
                  if (calls := self._stage(info)) is not None}
        for name, calls in list(staged.items()):
            info = self.plugins[name]
            if not self._commit(info, [c for c in calls if not c.override]):
                del staged[name]
        for name, calls in staged.items():
            self._commit(self.plugins[name], [c for c in calls if c.override])

    def _stage(self, info: PluginInfo) -> list[_Call] | None:
        """Call the plugin's ``register_*`` hooks, recording the calls; None if it failed."""
        calls: list[_Call] = []
        for hook, impl in self._plugin_impls(info.name):
            def register(name: str, ref: Any, override: bool = False, _hook: str = hook) -> None:
                calls.append(_Call(_hook, name, ref, override))
                self.registries[_hook].check_form(name, ref, info.origin)

            try:
                self._call(info, impl, register=register)
            except PluginError as exc:
                self._fail(info, str(exc))
                return None
        return calls

    def _commit(self, info: PluginInfo, calls: list[_Call]) -> bool:
        """Add the calls to the registries; on a clash, undo them and fail the plugin."""
        done: list[_Call] = []
        try:
            for call in calls:
                self.registries[call.hook].add(call.name, call.ref, info.name,
                                               info.distribution, override=call.override)
                done.append(call)
        except PluginError as exc:
            for call in reversed(done):
                self.registries[call.hook].remove(call.name)
            self._fail(info, str(exc))
            return False
        for call in calls:
            info.registered.setdefault(call.hook, []).append(call.name)
        return True

    def _plugin_impls(self, plugin: str) -> list[tuple[str, pluggy.HookImpl]]:
        """``(hook, impl)`` for each registry hook ``plugin`` implements."""
        return [(hook, impl) for hook in REGISTRY_HOOKS
                for impl in getattr(self.pm.hook, hook).get_hookimpls()
                if impl.plugin_name == plugin]

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
        """Subcommands from ``register_commands``: name -> (command, plugin). Collected once.

        A plugin whose hook raises, or a command name already taken by an earlier plugin, is
        left out with a WARNING, so one broken plugin never takes the ``octavo`` command down.
        """
        self.load()
        with self._lock:
            if self._commands is None:
                commands: dict[str, tuple[click.Command, PluginInfo]] = {}
                for info, impl in self._impls("register_commands"):
                    for name, command in self._plugin_commands(info, impl).items():
                        if name in commands:
                            logger.warning("command %r of %s is left out: %s already adds it",
                                           name, info.origin, commands[name][1].origin)
                            continue
                        commands[name] = (command, info)
                        info.registered.setdefault("register_commands", []).append(name)
                self._commands = commands
            return self._commands

    def _plugin_commands(self, info: PluginInfo, impl: pluggy.HookImpl) -> dict[str, Any]:
        import click

        group = click.Group()  # each plugin adds to its own group
        try:
            self._call(info, impl, cli=group)
        except PluginError as exc:
            if info.name in DEFAULT_PLUGINS:
                raise
            logger.warning("the commands of %s are left out: %s", info.origin,
                           str(exc).removeprefix(f"{info.origin}: "))
            return {}
        return dict(group.commands)


def _info(ep: md.EntryPoint) -> PluginInfo:
    if ep.dist is None:
        return PluginInfo(ep.name, "unknown", "unknown")
    return PluginInfo(ep.name, ep.dist.name, ep.dist.version)


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


def platforms() -> Registry:
    """Platform classes (``Platform``) by device name."""
    return get_plugin_manager().registry("register_platforms")
