"""Fixtures shared by the model-family tests."""

from __future__ import annotations

import dataclasses

import pytest


@pytest.fixture
def assert_feature_matters():
    """``check(suite_cls, changes)``: a model of ``suite_cls``'s family whose DecoderSpec is
    altered by ``changes(spec) -> dict of field: value`` (same weights) must fail the suite's
    prefill check. Guards against suite classes that cannot fail."""

    def check(suite_cls, changes) -> None:
        suite = suite_cls()
        conformance = suite.build()
        family = type(conformance.model)

        class Altered(family):
            @classmethod
            def decoder_spec(cls, config):
                spec = family.decoder_spec(config)
                return dataclasses.replace(spec, **changes(spec))

        suite.model_class = Altered
        model = suite.build_model(conformance.config)
        model.load_weights(suite.hf_weights(conformance.hf_model))
        with pytest.raises(AssertionError):
            suite.check_prefill(conformance.hf_model, model, suite.prompts(conformance.config))

    return check
