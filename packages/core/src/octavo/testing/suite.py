"""What every conformance suite shares: which registry it tests and which names it verifies.

A suite class tests the implementations registered under one ``register_*`` hook. A test
class that subclasses it names the registered name it verifies (``registered_name``); the
suite resolves the class through the registry, as the engine does, so registering and
validating the name is part of the test. Octavo's pytest plugin records, for every collected
suite class, the ``(hook, names)`` it verifies (see :mod:`octavo.testing.coverage`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ConformanceSuite:
    """Base of the conformance suites of :mod:`octavo.testing`.

    Attributes:
        registry_hook: the hook whose registry holds the implementations under test
            (``"register_schedulers"``); set by each suite.
        registered_name: the registered name a test class verifies; set by the test class.
    """

    registry_hook: ClassVar[str] = ""
    registered_name: ClassVar[str] = ""

    @classmethod
    def verified_names(cls) -> tuple[str, ...]:
        """The names (in ``registry_hook``'s registry) this class verifies."""
        return (cls.registered_name,) if cls.registered_name else ()

    @classmethod
    def implementation(cls) -> Any:
        """The class registered as ``registered_name``, imported and validated by its registry."""
        from octavo.plugins import get_plugin_manager

        if not cls.registered_name:
            raise TypeError(f"{cls.__name__} sets no registered_name (the {cls.registry_hook} "
                            "name it verifies)")
        return get_plugin_manager().registry(cls.registry_hook).get(cls.registered_name)
