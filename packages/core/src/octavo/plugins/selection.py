"""Which entry-point plugins load: the allowlist, what allowed plugins need, and the denylist.

- ``OCTAVO_PLUGINS=a,b`` loads only ``a`` and ``b`` — and the plugins their distributions
  depend on (``octavo-quant`` needs the weight formats of ``octavo-models``), so an allowlist
  never leaves a plugin without what it was built on.
- ``OCTAVO_DISABLE_PLUGINS=a,b`` (or ``-a`` items in ``OCTAVO_PLUGINS``) never loads them; a
  denied name wins over the allowlist and over what others need.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

ALLOWLIST_ENV = "OCTAVO_PLUGINS"
DENYLIST_ENV = "OCTAVO_DISABLE_PLUGINS"


@dataclass(frozen=True)
class Selection:
    """The parsed environment: ``allow`` is None when every plugin may load."""

    allow: frozenset[str] | None
    deny_listed: frozenset[str]  # from OCTAVO_DISABLE_PLUGINS
    deny_minus: frozenset[str]  # from "-name" items of OCTAVO_PLUGINS

    @property
    def deny(self) -> frozenset[str]:
        return self.deny_listed | self.deny_minus

    def denied_reason(self, name: str) -> str | None:
        if name in self.deny_listed:
            return f"disabled by {DENYLIST_ENV}"
        if name in self.deny_minus:
            return f"disabled by {ALLOWLIST_ENV}=-{name}"
        return None


def _names(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def read_selection(environ: Mapping[str, str] | None = None) -> Selection:
    """Parse ``OCTAVO_PLUGINS`` and ``OCTAVO_DISABLE_PLUGINS``.

    ``OCTAVO_PLUGINS`` unset means every plugin; set but empty means none; a list of only
    ``-name`` items is a denylist (every other plugin loads).
    """
    env = os.environ if environ is None else environ
    raw = env.get(ALLOWLIST_ENV)
    items = _names(raw or "")
    minus = frozenset(item[1:].strip() for item in items if item.startswith("-"))
    plain = frozenset(item for item in items if not item.startswith("-"))
    allow = None if raw is None or (minus and not plain) else plain
    return Selection(allow, frozenset(_names(env.get(DENYLIST_ENV, ""))), minus)


def canonical(dist_name: str) -> str:
    """A distribution name as PEP 503 normalizes it (``Octavo_Models`` -> ``octavo-models``)."""
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def required_distributions(dist: md.Distribution | None) -> set[str]:
    """The canonical names ``dist`` requires unconditionally (extras left out, markers
    evaluated for this interpreter)."""
    from packaging.requirements import InvalidRequirement, Requirement

    names = set()
    for line in (dist.requires or []) if dist is not None else []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.add(canonical(req.name))
    return names


def _dist_key(ep: md.EntryPoint) -> str:
    return canonical(ep.dist.name) if ep.dist is not None else ""


def needed_by(names: Iterable[str], found: list[md.EntryPoint]) -> set[str]:
    """Plugin names whose distributions the plugins ``names`` depend on, transitively."""
    by_dist: dict[str, list[md.EntryPoint]] = {}
    for ep in found:
        by_dist.setdefault(_dist_key(ep), []).append(ep)
    todo = [ep for ep in found if ep.name in set(names)]
    seen_dists = {_dist_key(ep) for ep in todo}
    needed: set[str] = set()
    while todo:
        ep = todo.pop()
        for dist in required_distributions(ep.dist) & set(by_dist) - seen_dists:
            seen_dists.add(dist)
            needed.update(dep.name for dep in by_dist[dist])
            todo.extend(by_dist[dist])
    return needed


def split_entry_points(found: list[md.EntryPoint], selection: Selection
                       ) -> tuple[list[md.EntryPoint], list[tuple[md.EntryPoint, str]]]:
    """``(enabled, [(disabled, why), ...])``, each in the order of ``found``."""
    installed = {ep.name for ep in found}
    unknown = ((selection.allow or frozenset()) | selection.deny) - installed
    if unknown:
        logger.warning("%s / %s name plugins that are not installed: %s", ALLOWLIST_ENV,
                       DENYLIST_ENV, ", ".join(sorted(unknown)))
    wanted = installed if selection.allow is None else (
        selection.allow | needed_by(selection.allow, found))
    enabled, disabled = [], []
    for ep in found:
        reason = selection.denied_reason(ep.name)
        if reason is None and ep.name not in wanted:
            reason = f"not in {ALLOWLIST_ENV}"
        if reason is None:
            enabled.append(ep)
        else:
            disabled.append((ep, reason))
    _warn_missing_needs(enabled, [ep for ep, _ in disabled if ep.name in selection.deny], found)
    return enabled, disabled


def _warn_missing_needs(enabled: list[md.EntryPoint], denied: list[md.EntryPoint],
                        found: list[md.EntryPoint]) -> None:
    for ep in enabled:
        lost = sorted({d.name for d in denied} & needed_by([ep.name], found))
        if lost:
            logger.warning("plugin %r is loaded but the plugins it depends on are disabled: %s",
                           ep.name, ", ".join(lost))
