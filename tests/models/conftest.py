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


@pytest.fixture
def load_adapting_once(monkeypatch):
    """``load(model_cls, folder) -> (LoadedModel, adapted config)``: the loader loads
    ``folder`` (a checkpoint of ``model_cls``) while ``model_cls``'s config hooks are recorded;
    fails unless ``adapt_config`` ran once and ``kv_cache_spec``, the model and
    ``LoadedModel.hf_config`` all got its result."""
    from octavo.config import ModelSettings
    from octavo.model_loader.loader import load_model

    def load(model_cls, folder):
        adapted, spec_configs = [], []
        adapt = model_cls.adapt_config.__func__
        spec = model_cls.kv_cache_spec.__func__

        def adapt_config(cls, config):
            adapted.append(adapt(cls, config))
            return adapted[-1]

        def kv_cache_spec(cls, config):
            spec_configs.append(config)
            return spec(cls, config)

        monkeypatch.setattr(model_cls, "adapt_config", classmethod(adapt_config))
        monkeypatch.setattr(model_cls, "kv_cache_spec", classmethod(kv_cache_spec))
        loaded = load_model(ModelSettings(model=str(folder), device="cpu"))
        (config,) = adapted
        assert spec_configs == [config]
        assert loaded.model.config is config and loaded.hf_config is config
        return loaded, config

    return load
