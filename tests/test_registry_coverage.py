"""Every name any installed plugin registers — models, schedulers, KV cache managers, swappers,
weight formats, quantization methods, platforms — has a conformance suite class verifying it.

The check runs over the classes collected in this session, so it lives at the top of the test
tree: it runs with the whole tree (``pytest``, ``pytest tests``), not with one area's folder
(``pytest tests/models`` leaves out the example plugin's suites). It fails when no suite class
was collected (a plugin with names but no suite is uncovered, not excused).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from octavo.testing.coverage import (
    COVERED_HOOKS,
    assert_architectures_covered,
    assert_registries_covered,
    collect_coverage,
    registered_architectures,
    registered_names,
)
from octavo.testing.kv_cache_suite import KVCacheManagerSuite
from octavo.testing.model_suite import ModelConformanceSuite
from octavo.testing.scheduler_suite import SchedulerSuite


def test_every_registered_name_has_a_conformance_test(conformance_coverage):
    assert_registries_covered(conformance_coverage)


class _VerifiesGPT2(ModelConformanceSuite):
    architectures = ("GPT2LMHeadModel",)


class _VerifiesFCFS(SchedulerSuite):
    registered_name = "fcfs"


class _VerifiesNothing(KVCacheManagerSuite):
    pass  # no registered_name: verifies nothing


def _item(cls, nodeid="tests/x.py::Cls"):
    return SimpleNamespace(cls=cls, parent=SimpleNamespace(nodeid=nodeid))


class _BrokenConfig(ModelConformanceSuite):
    def hf_config(self):
        raise RuntimeError("broken")


def _full_coverage() -> dict[str, dict[str, list[str]]]:
    return {hook: {name: ["t"] for name in registered_names(hook)} for hook in COVERED_HOOKS}


def test_coverage_is_read_from_the_collected_suite_classes():
    items = [_item(_VerifiesGPT2), _item(_VerifiesGPT2), _item(None), _item(int),
             _item(_BrokenConfig, "tests/x.py::TestBroken"), _item(_VerifiesNothing),
             _item(_VerifiesFCFS, "tests/y.py::TestFCFS")]
    assert collect_coverage(items) == {
        "register_models": {"GPT2LMHeadModel": ["tests/x.py::Cls"]},
        "register_schedulers": {"fcfs": ["tests/y.py::TestFCFS"]}}


def test_an_uncovered_architecture_fails_by_name():
    coverage = {"register_models": {arch: ["t"] for arch in
                                    registered_architectures() - {"MptForCausalLM"}}}
    with pytest.raises(AssertionError, match="'MptForCausalLM' is registered but no"):
        assert_architectures_covered(coverage)


@pytest.mark.parametrize("hook, name", [
    ("register_schedulers", "priority"), ("register_kv_cache_managers", "paged"),
    ("register_swappers", "disk"), ("register_weight_formats", "*.gguf"),
    ("register_quantization_methods", "none"), ("register_platforms", "cuda")])
def test_an_uncovered_name_of_any_registry_fails_by_name(hook, name):
    coverage = _full_coverage()
    del coverage[hook][name]
    with pytest.raises(AssertionError, match=f"{name!r} is registered but no \\w+Suite"):
        assert_registries_covered(coverage)


def test_full_coverage_passes():
    assert_registries_covered(_full_coverage())


def test_a_suite_for_an_unregistered_name_fails():
    coverage = _full_coverage()
    coverage["register_models"]["NoSuchForCausalLM"] = ["tests/x.py::TestNoSuch"]
    coverage["register_schedulers"]["no-such"] = ["tests/x.py::TestNoSuchScheduler"]
    with pytest.raises(AssertionError, match="(?s)TestNoSuch verify model 'NoSuchForCausalLM'"
                                             ".*TestNoSuchScheduler verify scheduler 'no-such'"):
        assert_registries_covered(coverage)


def test_a_third_party_distribution_checks_its_own_names():
    assert registered_architectures("octavo-example-plugin") == {"OctavoExampleForCausalLM"}
    assert registered_names("register_schedulers", "octavo-example-plugin") == {"example-fcfs"}
    coverage = {hook: {name: ["t"] for name in registered_names(hook, "octavo-example-plugin")}
                for hook in COVERED_HOOKS}
    assert_registries_covered(coverage, distribution="octavo-example-plugin")
    del coverage["register_weight_formats"]["*.npz"]
    with pytest.raises(AssertionError, match="weight format '\\*.npz' is registered"):
        assert_registries_covered(coverage, distribution="octavo-example-plugin")


def test_no_suite_at_all_fails_rather_than_skips():
    with pytest.raises(AssertionError, match="(?s)'LlamaForCausalLM' is registered but no.*"
                                             "no conformance suite class was collected"):
        assert_registries_covered({})
    with pytest.raises(AssertionError, match="'example-fcfs' is registered"):
        assert_registries_covered({}, distribution="octavo-example-plugin")
    with pytest.raises(AssertionError, match="scheduler 'fcfs' is registered"):
        assert_registries_covered({}, distribution="octavo-core")
    assert_architectures_covered({}, distribution="octavo-core")  # registers no model: fine
