"""Named registries filled by plugins, holding lazy string references."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class PluginError(Exception):
    """A plugin is broken or registered something invalid; the message names plugin and distribution."""


def origin(plugin: str, distribution: str) -> str:
    """How error messages name a plugin: ``plugin 'x' (distribution 'y')``."""
    return f"plugin {plugin!r} (distribution {distribution!r})"


@dataclass
class Entry:
    """One registered name: the object or its ``"module:attr"`` reference, and who registered it."""

    name: str
    ref: Any
    plugin: str
    distribution: str
    replaces: Entry | None = None  # the entry this one overrode (``override=True``)
    _loaded: Any = field(default=None, repr=False)

    @property
    def origin(self) -> str:
        return origin(self.plugin, self.distribution)


def import_ref(ref: str) -> Any:
    """Import ``"package.module:Attribute"`` (the attribute may be dotted)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ImportError(f"{ref!r} is not of the form 'package.module:Attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Maps names to implementations of one interface, imported and validated on first use.

    Args:
        kind: what the registry holds, for messages ("attention backend").
        interface: a ``"module:Class"`` every entry must subclass (concretely), or None.
        check: optional extra validator ``check(obj) -> str | None`` (an error text).
    """

    def __init__(self, kind: str, interface: str | None = None,
                 check: Callable[[Any], str | None] | None = None,
                 provider: str | None = None):
        self.kind = kind
        self.interface = interface
        self.check = check
        self.provider = provider  # the distribution that provides the usual entries
        self._entries: dict[str, Entry] = {}

    def install_hint(self) -> str:
        """Which distribution to install for this registry's usual entries (for messages)."""
        where = f"install {self.provider} (pip install {self.provider}) or a plugin that " \
            "registers one" if self.provider else "install a plugin that registers one"
        return f"{where}; `octavo plugins` lists what is loaded"

    def add(self, name: str, ref: Any, plugin: str, distribution: str,
            override: bool = False) -> None:
        """Record ``name -> ref`` for ``plugin``; a malformed entry is a PluginError.

        A name already registered is a PluginError unless ``override`` is true: then the new
        entry replaces the old one in its place (logged at INFO), keeping the registry's order.
        """
        where = origin(plugin, distribution)
        self.check_form(name, ref, where)
        old = self._entries.get(name)
        if old is not None and not override:
            raise PluginError(f"{self.kind} {name!r} registered twice: by {old.origin} and by "
                              f"{where} (pass override=True to replace it)")
        if old is not None:
            logger.info("%s %r of %s is overridden by %s", self.kind, name, old.origin, where)
        self._entries[name] = Entry(name, ref, plugin, distribution, replaces=old)

    def check_form(self, name: Any, ref: Any, where: str) -> None:
        """Raise a PluginError unless ``name`` is a non-empty string and a string ``ref`` has a
        colon (``where`` names the plugin)."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"{where} registered a {self.kind} with an invalid name {name!r}")
        if isinstance(ref, str) and ":" not in ref:
            raise PluginError(f"{where} registered {self.kind} {name!r} as {ref!r}, which is not "
                              "of the form 'package.module:Attribute'")

    def remove(self, name: str) -> None:
        """Forget ``name`` (the manager undoes a failed plugin's registrations with this)."""
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names, in registration order (core's defaults first)."""
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        """The entry for ``name`` without importing it; KeyError lists the known names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or f"none: {self.install_hint()}"
            raise KeyError(f"no {self.kind} named {name!r} (registered: {known})") from None

    def get(self, name: str) -> Any:
        """Return the implementation, importing and validating it on first use."""
        entry = self.entry(name)
        if entry._loaded is None:
            entry._loaded = self._resolve(entry)
        return entry._loaded

    def load_all(self) -> dict[str, Any]:
        """Import and validate every entry."""
        return {name: self.get(name) for name in self._entries}

    def _resolve(self, entry: Entry) -> Any:
        where = f"{self.kind} {entry.name!r} from {entry.origin}"
        obj = entry.ref
        if isinstance(obj, str):
            try:
                obj = import_ref(obj)
            except Exception as exc:
                raise PluginError(f"{where}: cannot import {entry.ref!r}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if self.interface is not None:
            try:
                base = import_ref(self.interface)
            except Exception as exc:
                raise PluginError(f"{where}: cannot import the interface {self.interface!r} "
                                  f"to check it against: {exc}") from exc
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise PluginError(f"{where}: {obj!r} does not implement {self.interface} "
                                  "(it is not a subclass)")
            if inspect.isabstract(obj):
                missing = ", ".join(sorted(obj.__abstractmethods__))
                raise PluginError(f"{where}: {obj.__qualname__} does not implement "
                                  f"{self.interface}: abstract methods left: {missing}")
        if self.check is not None:
            problem = self.check(obj)
            if problem:
                raise PluginError(f"{where}: {problem}")
        return obj
