"""Named registries filled by plugins, holding lazy string references."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


class PluginError(Exception):
    """A plugin registered something invalid; the message names the plugin and distribution."""


@dataclass
class Entry:
    name: str
    ref: Any  # the object, or "module:attr"
    plugin: str
    distribution: str
    _loaded: Any = field(default=None, repr=False)

    @property
    def origin(self) -> str:
        return f"plugin {self.plugin!r} (distribution {self.distribution!r})"


def import_ref(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ImportError(f"{ref!r} is not of the form 'package.module:Attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Maps names to implementations of one interface.

    Args:
        kind: what the registry holds, for messages ("attention backend").
        interface: a ``"module:Class"`` the entries must subclass, or None.
        check: optional extra validator ``check(obj) -> str | None`` (an error text).
    """

    def __init__(self, kind: str, interface: str | None = None,
                 check: Callable[[Any], str | None] | None = None):
        self.kind = kind
        self.interface = interface
        self.check = check
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, ref: Any, plugin: str, distribution: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {plugin!r} (distribution {distribution!r}) registered a {self.kind} "
                f"with an invalid name {name!r}")
        if name in self._entries:
            prev = self._entries[name]
            raise PluginError(
                f"{self.kind} {name!r} registered twice: by {prev.origin} and by plugin "
                f"{plugin!r} (distribution {distribution!r})")
        self._entries[name] = Entry(name, ref, plugin, distribution)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"no {self.kind} named {name!r} (registered: {known})") from None

    def get(self, name: str) -> Any:
        """Return the implementation, importing and validating it on first use."""
        entry = self.entry(name)
        if entry._loaded is None:
            entry._loaded = self._resolve(entry)
        return entry._loaded

    def load_all(self) -> dict[str, Any]:
        return {name: self.get(name) for name in self._entries}

    def _resolve(self, entry: Entry) -> Any:
        obj = entry.ref
        if isinstance(obj, str):
            try:
                obj = import_ref(obj)
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"{self.kind} {entry.name!r} from {entry.origin}: cannot import "
                    f"{entry.ref!r}: {exc}") from exc
        if self.interface is not None:
            base = import_ref(self.interface)
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise PluginError(
                    f"{self.kind} {entry.name!r} from {entry.origin}: {obj!r} does not "
                    f"implement {self.interface}")
        if self.check is not None:
            problem = self.check(obj)
            if problem:
                raise PluginError(f"{self.kind} {entry.name!r} from {entry.origin}: {problem}")
        return obj
