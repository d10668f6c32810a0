"""Every architecture any installed plugin registers has a conformance suite class.

The check runs over the classes collected in this session, so it lives at the top of the test
tree: it runs with the whole tree (``pytest``, ``pytest tests``), not with one area's folder
(``pytest tests/models`` leaves out the example plugin's suite). It fails when no suite class
was collected (a plugin with models but no suite is uncovered, not excused).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from octavo.testing.coverage import (
    assert_architectures_covered,
    collect_coverage,
    registered_architectures,
)
from octavo.testing.model_suite import ModelConformanceSuite


def test_every_registered_architecture_has_a_conformance_test(conformance_coverage):
    assert_architectures_covered(conformance_coverage)


class _VerifiesGPT2(ModelConformanceSuite):
    architectures = ("GPT2LMHeadModel",)


def _item(cls, nodeid="tests/x.py::Cls"):
    return SimpleNamespace(cls=cls, parent=SimpleNamespace(nodeid=nodeid))


class _BrokenConfig(ModelConformanceSuite):
    def hf_config(self):
        raise RuntimeError("broken")


def test_coverage_is_read_from_the_collected_suite_classes():
    items = [_item(_VerifiesGPT2), _item(_VerifiesGPT2), _item(None), _item(int),
             _item(_BrokenConfig, "tests/x.py::TestBroken")]
    assert collect_coverage(items) == {"GPT2LMHeadModel": ["tests/x.py::Cls"]}


def test_an_uncovered_architecture_fails_by_name():
    coverage = {arch: ["t"] for arch in registered_architectures() - {"MptForCausalLM"}}
    with pytest.raises(AssertionError, match="'MptForCausalLM' is registered but no"):
        assert_architectures_covered(coverage)


def test_a_suite_for_an_unregistered_architecture_fails():
    coverage = {arch: ["t"] for arch in registered_architectures()}
    coverage["NoSuchForCausalLM"] = ["tests/x.py::TestNoSuch"]
    with pytest.raises(AssertionError, match="TestNoSuch verify 'NoSuchForCausalLM'"):
        assert_architectures_covered(coverage)


def test_a_third_party_distribution_checks_its_own_architectures():
    assert registered_architectures("octavo-example-plugin") == {"OctavoExampleForCausalLM"}
    assert_architectures_covered({"OctavoExampleForCausalLM": ["t"]},
                                 distribution="octavo-example-plugin")


def test_no_suite_at_all_fails_rather_than_skips():
    with pytest.raises(AssertionError, match="(?s)'LlamaForCausalLM' is registered but no.*"
                                             "no ModelConformanceSuite subclass was collected"):
        assert_architectures_covered({})
    with pytest.raises(AssertionError, match="'OctavoExampleForCausalLM' is registered"):
        assert_architectures_covered({}, distribution="octavo-example-plugin")
    assert_architectures_covered({}, distribution="octavo-core")  # registers no model: fine
