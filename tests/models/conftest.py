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


@dataclasses.dataclass
class ConfigCalls:
    """What a model class's config hooks saw while a test ran."""

    adapted: list  # what each adapt_config call returned
    kv_cache_spec: list  # the config each kv_cache_spec call received


@pytest.fixture
def track_config_calls(monkeypatch):
    """``track(model_cls) -> ConfigCalls``: record ``model_cls.adapt_config`` and
    ``model_cls.kv_cache_spec`` calls for the rest of the test."""

    def track(model_cls) -> ConfigCalls:
        calls = ConfigCalls([], [])
        adapt = model_cls.adapt_config.__func__
        spec = model_cls.kv_cache_spec.__func__

        def adapt_config(cls, config):
            calls.adapted.append(adapt(cls, config))
            return calls.adapted[-1]

        def kv_cache_spec(cls, config):
            calls.kv_cache_spec.append(config)
            return spec(cls, config)

        monkeypatch.setattr(model_cls, "adapt_config", classmethod(adapt_config))
        monkeypatch.setattr(model_cls, "kv_cache_spec", classmethod(kv_cache_spec))
        return calls

    return track
