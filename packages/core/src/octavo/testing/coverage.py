"""Registry coverage: every registered name must have a conformance suite class verifying it.

Octavo's pytest plugin records, once collection is done, which registered names the collected
suite classes (subclasses of :class:`~octavo.testing.suite.ConformanceSuite`: the model,
scheduler, KV cache manager, swapper, weight format, quantization method and platform suites)
verify, per registry hook. Third-party plugins' test classes count too: they are collected in
the same session. A test then compares that with the registries::

    from octavo.testing.coverage import assert_registries_covered

    def test_every_registered_name_has_a_conformance_test(conformance_coverage):
        assert_registries_covered(conformance_coverage)

A third-party plugin checks only its own names with ``distribution="my-dist"``.
:func:`assert_architectures_covered` is the same check for the model registry alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence

import pytest

# hook -> registered name -> node ids of the suite classes that verify it
Coverage = dict[str, dict[str, list[str]]]
COVERAGE_KEY = pytest.StashKey[Coverage]()

# The registries whose every name needs a suite (attention backends and layer ops are checked
# by their own suites and by hardware-specific test folders, not counted here).
COVERED_HOOKS: tuple[str, ...] = (
    "register_models", "register_schedulers", "register_kv_cache_managers",
    "register_swappers", "register_weight_formats", "register_quantization_methods",
    "register_platforms",
)

# hook -> the suite a test class subclasses to cover it (for messages)
SUITES: dict[str, str] = {
    "register_models": "octavo.testing.model_suite.ModelConformanceSuite",
    "register_schedulers": "octavo.testing.scheduler_suite.SchedulerSuite",
    "register_kv_cache_managers": "octavo.testing.kv_cache_suite.KVCacheManagerSuite",
    "register_swappers": "octavo.testing.swapper_suite.SwapperSuite",
    "register_weight_formats": "octavo.testing.weight_format_suite.WeightFormatSuite",
    "register_quantization_methods":
        "octavo.testing.quantization_suite.QuantizationMethodSuite",
    "register_platforms": "octavo.testing.platform_suite.PlatformSuite",
}


def collect_coverage(items: Iterable[pytest.Item]) -> Coverage:
    """Which registered names the suite classes among ``items`` verify, per hook."""
    suite_module = sys.modules.get("octavo.testing.suite")
    if suite_module is None:  # nothing imported a suite, so no test class subclasses one
        return {}
    base = suite_module.ConformanceSuite
    classes = {item.cls: item.parent.nodeid for item in items
               if isinstance(getattr(item, "cls", None), type) and issubclass(item.cls, base)}
    coverage: Coverage = {}
    for cls, nodeid in classes.items():
        try:
            names = cls.verified_names()
        except Exception:  # noqa: BLE001 - a broken suite class fails its own tests
            continue
        for name in names:
            coverage.setdefault(cls.registry_hook, {}).setdefault(name, []).append(nodeid)
    return coverage


def registered_names(hook: str, distribution: str | None = None) -> set[str]:
    """Names in ``hook``'s registry (registered by one distribution, when given)."""
    from octavo.plugins import get_plugin_manager

    registry = get_plugin_manager().registry(hook)
    return {name for name in registry
            if distribution is None or registry.entry(name).distribution == distribution}


def registered_architectures(distribution: str | None = None) -> set[str]:
    """Architecture names in the model registry (of one distribution, when given)."""
    return registered_names("register_models", distribution)


def coverage_problems(coverage: Mapping[str, Mapping[str, list[str]]], hook: str,
                      distribution: str | None = None) -> list[str]:
    """One line per name of ``hook`` no collected suite class verifies, and per suite class
    verifying a name nothing registers."""
    from octavo.plugins import REGISTRY_HOOKS

    covered = coverage.get(hook, {})
    registered = registered_names(hook, distribution)
    kind = REGISTRY_HOOKS[hook][0]
    suite = SUITES.get(hook, "a conformance suite").rpartition(".")[2]
    problems = [f"{kind} {name!r} is registered but no {suite} subclass verifies it"
                for name in sorted(registered - set(covered))]
    everything = registered if distribution is None else registered_names(hook)
    problems += [f"{', '.join(covered[name])} verify {kind} {name!r}, which no installed "
                 f"plugin registers" for name in sorted(set(covered) - everything)]
    return problems


def assert_registries_covered(coverage: Mapping[str, Mapping[str, list[str]]],
                              distribution: str | None = None,
                              hooks: Sequence[str] = COVERED_HOOKS) -> None:
    """Fail naming every registered name (of ``hooks``) that no collected suite class
    verifies — also when no suite was collected at all: a plugin without suites is uncovered,
    never skipped — and every suite class verifying a name nothing registers."""
    problems = [line for hook in hooks for line in coverage_problems(coverage, hook, distribution)]
    if problems and not any(coverage.get(hook) for hook in hooks):
        problems.append("no conformance suite class was collected in this session")
    assert not problems, "\n".join(problems + [
        "(coverage counts the suite classes collected in this session: run the whole test "
        "tree, including the plugins' tests)"])


def assert_architectures_covered(coverage: Mapping[str, Mapping[str, list[str]]],
                                 distribution: str | None = None) -> None:
    """:func:`assert_registries_covered` for the model registry alone."""
    assert_registries_covered(coverage, distribution, hooks=("register_models",))
