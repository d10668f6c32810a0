"""Registry coverage: every registered model architecture must have a conformance suite class.

Octavo's pytest plugin records, once collection is done, which architectures the collected
:class:`~octavo.testing.model_suite.ModelConformanceSuite` subclasses verify (third-party
plugins' test classes included: they are collected in the same session). A test then compares
that with the model registry::

    from octavo.testing.coverage import assert_architectures_covered

    def test_every_registered_architecture_has_a_conformance_test(conformance_coverage):
        assert_architectures_covered(conformance_coverage)

A third-party plugin checks its own architectures with ``distribution="my-dist"``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import pytest

# architecture -> node ids of the suite classes that verify it
Coverage = dict[str, list[str]]
COVERAGE_KEY = pytest.StashKey[Coverage]()


def collect_coverage(items: Iterable[pytest.Item]) -> Coverage:
    """Which architectures the suite classes among ``items`` verify."""
    suite_module = sys.modules.get("octavo.testing.model_suite")
    if suite_module is None:  # nothing imported the suite, so no test class subclasses it
        return {}
    ModelConformanceSuite = suite_module.ModelConformanceSuite  # noqa: N806
    coverage: Coverage = {}
    classes = {item.cls: item.parent.nodeid for item in items
               if isinstance(getattr(item, "cls", None), type)
               and issubclass(item.cls, ModelConformanceSuite)}
    for cls, nodeid in classes.items():
        try:
            archs = cls.verified_architectures()
        except Exception:  # noqa: BLE001 - a broken hf_config fails the class's own tests
            continue
        for arch in archs:
            coverage.setdefault(arch, []).append(nodeid)
    return coverage


def registered_architectures(distribution: str | None = None) -> set[str]:
    """Architecture names in the model registry (of one distribution, when given)."""
    from octavo.plugins import models

    registry = models()
    return {name for name in registry
            if distribution is None or registry.entry(name).distribution == distribution}


def assert_architectures_covered(coverage: Mapping[str, list[str]],
                                 distribution: str | None = None) -> None:
    """Fail naming every registered architecture no collected suite class verifies (also when
    no suite was collected at all), and every suite class that verifies an architecture
    nothing registers."""
    registered = registered_architectures(distribution)
    problems = [f"architecture {arch!r} is registered but no ModelConformanceSuite subclass "
                f"verifies it" for arch in sorted(registered - set(coverage))]
    if distribution is None:
        everything = registered
    else:
        everything = registered_architectures()
    problems += [f"{', '.join(coverage[arch])} verify {arch!r}, which no installed plugin "
                 f"registers" for arch in sorted(set(coverage) - everything)]
    if not coverage and problems:
        problems.append("no ModelConformanceSuite subclass was collected in this session")
    assert not problems, "\n".join(problems + [
        "(coverage counts the suite classes collected in this session: run the whole test "
        "tree, including the plugins' tests)"])
