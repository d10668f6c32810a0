"""Fixtures shared by the core tests."""

import pytest

from octavo.plugins import reset_plugin_manager


@pytest.fixture
def fresh_plugins(monkeypatch):
    """A plugin manager loaded anew for the test, with no ``OCTAVO_PLUGINS`` allowlist
    or ``OCTAVO_DISABLE_PLUGINS`` denylist."""
    monkeypatch.delenv("OCTAVO_PLUGINS", raising=False)
    monkeypatch.delenv("OCTAVO_DISABLE_PLUGINS", raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()
