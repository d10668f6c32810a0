"""What ``octavo plugins`` prints: every plugin, its status and what it registered."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from octavo.plugins.registry import PluginError

if TYPE_CHECKING:
    from octavo.plugins.manager import OctavoPluginManager, PluginInfo


def all_plugins(pm: OctavoPluginManager) -> list[PluginInfo]:
    """Loaded plugins in load order, then failed and disabled ones by name.

    Commands are collected first, so ``register_commands`` lists their names; a failure there
    leaves them out (it is logged) rather than hiding the report.
    """
    with contextlib.suppress(PluginError):
        pm.commands()
    others = sorted([*pm.failed.values(), *pm.disabled.values()], key=lambda info: info.name)
    return [*pm.plugins.values(), *others]


def _name_note(pm: OctavoPluginManager, info: PluginInfo, hook: str, name: str) -> str:
    registry = pm.registries.get(hook)
    if registry is None or name not in registry:
        return name
    entry = registry.entry(name)
    if entry.plugin != info.name:
        return f"{name} (overridden by plugin {entry.plugin!r})"
    if entry.replaces is not None:
        return f"{name} (overrides plugin {entry.replaces.plugin!r})"
    return name


def describe(pm: OctavoPluginManager, info: PluginInfo) -> list[str]:
    """The lines ``octavo plugins`` prints for one plugin."""
    head = f"{info.name}  ({info.distribution} {info.version})"
    if info.status != "loaded":
        return [f"{head}  {info.status}: {info.reason}"]
    lines = [head]
    for hook in info.hooks or ["(no hooks)"]:
        names = [_name_note(pm, info, hook, n) for n in info.registered.get(hook, [])]
        lines.append(f"    {hook}: {', '.join(names)}" if names else f"    {hook}")
    return lines
