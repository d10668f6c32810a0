"""docs/plugins.md documents every hook in hookspecs.py (parsed from its source)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from octavo.plugins import REGISTRY_HOOKS, hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def parse_hookspecs() -> dict[str, str]:
    """Hook name -> ``name(arg, ...)`` for every ``@hookspec`` function in hookspecs.py."""
    tree = ast.parse(Path(hookspecs.__file__).read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == "hookspec" for d in node.decorator_list):
            found[node.name] = f"{node.name}({', '.join(a.arg for a in node.args.args)})"
    return found


SPECS = parse_hookspecs()


def doc_text() -> str:
    return DOC.read_text()


def test_parser_finds_the_hooks():
    assert set(SPECS) == {name for name, obj in vars(hookspecs).items()
                          if hasattr(obj, "octavo_spec")}
    assert SPECS["register_commands"] == "register_commands(cli)"


@pytest.mark.parametrize("hook", sorted(SPECS))
def test_hook_is_documented(hook):
    headings = re.findall(r"^### `([^`]+)`", doc_text(), flags=re.MULTILINE)
    assert SPECS[hook] in headings, f"docs/plugins.md has no '### `{SPECS[hook]}`' section"


@pytest.mark.parametrize("hook", sorted(REGISTRY_HOOKS))
def test_hook_section_names_its_interface(hook):
    text = doc_text()
    start = text.index(f"### `{SPECS[hook]}`")
    end = text.find("\n### ", start + 1)
    section = text[start:end if end != -1 else None]
    assert f"Interface: `{REGISTRY_HOOKS[hook][1]}`" in section


def test_doc_covers_the_plugin_machinery():
    text = doc_text()
    for needle in ["OCTAVO_PLUGINS", "octavo plugins", "octavo plugins --json",
                   "[project.entry-points.octavo]", "register(name, ref)", "PluginError",
                   "DEFAULT_PLUGINS", "check_pending", "pytest11",
                   "tests/plugins/octavo-example-plugin"]:
        assert needle in text, needle
