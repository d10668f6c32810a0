"""octavo.config: every field of every settings model maps from ``OCTAVO_<FIELD>``."""

from __future__ import annotations

import os
import types
import typing

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from octavo import config

SETTINGS = [obj for obj in vars(config).values()
            if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings
            and obj.__module__ == config.__name__]
FIELDS = [(cls, name) for cls in SETTINGS for name in cls.model_fields]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.upper().startswith("OCTAVO_"):
            monkeypatch.delenv(key)


def base_type(annotation):
    """``int | None`` -> ``int``; other annotations unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return inner
    return annotation


def sample(cls, name):
    """A valid value for the field that differs from its default, and its env-var spelling."""
    field = cls.model_fields[name]
    kind, default = base_type(field.annotation), field.default
    if typing.get_origin(kind) is typing.Literal:
        value = next(choice for choice in typing.get_args(kind) if choice != default)
        return value, str(value)
    if kind is bool:
        return (not default), str(not default).lower()
    if kind is int:
        return (default or 0) + 3, str((default or 0) + 3)
    if kind is float:
        value = 0.5 if default != 0.5 else 0.25
        return value, str(value)
    if kind is str:
        return "Sample-Value", "Sample-Value"
    raise AssertionError(f"{cls.__name__}.{name}: no sample for {field.annotation}; extend sample()")


def invalid(cls, name):
    """An env value the field must reject, or None when every string is valid."""
    field = cls.model_fields[name]
    kind = base_type(field.annotation)
    if typing.get_origin(kind) is typing.Literal:
        return "not-a-choice"
    if kind is bool:
        return "maybe"
    if kind in (int, float):
        return "not-a-number"
    return None


def test_settings_models_are_found():
    assert {cls.__name__ for cls in SETTINGS} >= {"ModelSettings", "CacheSettings",
                                                  "SchedulerSettings"}


@pytest.mark.parametrize("cls, name", FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_env_var_maps_onto_field(monkeypatch, cls, name):
    value, env_value = sample(cls, name)
    default = getattr(cls(), name)
    monkeypatch.setenv(f"OCTAVO_{name.upper()}", env_value)
    from_env = getattr(cls(), name)
    assert from_env == getattr(cls(**{name: value}), name)  # env and keyword agree
    assert from_env != default


@pytest.mark.parametrize("cls, name", [f for f in FIELDS if invalid(*f) is not None],
                         ids=[f"{c.__name__}.{n}" for c, n in FIELDS if invalid(c, n) is not None])
def test_invalid_env_value_raises(monkeypatch, cls, name):
    monkeypatch.setenv(f"OCTAVO_{name.upper()}", invalid(cls, name))
    with pytest.raises(ValidationError, match=name):
        cls()


@pytest.mark.parametrize("cls, env, value", [
    (config.CacheSettings, "OCTAVO_BLOCK_SIZE", "0"),
    (config.CacheSettings, "OCTAVO_GPU_MEMORY_UTILIZATION", "1.5"),
    (config.CacheSettings, "OCTAVO_KV_CACHE_MEMORY_GIB", "-1"),
    (config.CacheSettings, "OCTAVO_NUM_GPU_BLOCKS_OVERRIDE", "0"),
    (config.ModelSettings, "OCTAVO_DTYPE", "float64"),
    (config.ModelSettings, "OCTAVO_MAX_MODEL_LEN", "0"),
    (config.SchedulerSettings, "OCTAVO_MAX_NUM_BATCHED_TOKENS", "-5"),
    (config.SchedulerSettings, "OCTAVO_MAX_NUM_SEQS", "2.5"),
])
def test_out_of_range_values_raise(monkeypatch, cls, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError, match=env.removeprefix("OCTAVO_").lower()):
        cls()


def test_documented_examples(monkeypatch):
    monkeypatch.setenv("OCTAVO_BLOCK_SIZE", "32")
    monkeypatch.setenv("OCTAVO_ENABLE_PREFIX_CACHING", "0")
    monkeypatch.setenv("OCTAVO_DTYPE", "bfloat16")
    monkeypatch.setenv("OCTAVO_SCHEDULER", "priority")
    cache = config.CacheSettings()
    assert (cache.block_size, cache.enable_prefix_caching) == (32, False)
    assert config.ModelSettings().dtype == "bfloat16"
    assert config.SchedulerSettings().scheduler == "priority"


def test_component_names_keep_their_case(monkeypatch):
    """A plugin's "MyScheduler" reaches the registry as written (checked there, not here)."""
    monkeypatch.setenv("OCTAVO_SCHEDULER", "MyScheduler")
    assert config.SchedulerSettings().scheduler == "MyScheduler"


def test_keywords_override_env(monkeypatch):
    monkeypatch.setenv("OCTAVO_BLOCK_SIZE", "32")
    assert config.CacheSettings(block_size=8).block_size == 8


def test_unrelated_octavo_env_vars_are_ignored(monkeypatch):
    # Each model reads only its own fields: another model's variable, OCTAVO_PLUGINS (read by
    # the plugin manager) or a stray variable must not trip extra="forbid".
    monkeypatch.setenv("OCTAVO_PLUGINS", "example")
    monkeypatch.setenv("OCTAVO_BLOCK_SIZE", "32")
    monkeypatch.setenv("OCTAVO_NOT_A_SETTING", "1")
    assert config.ModelSettings().model is None
    assert config.SchedulerSettings().max_num_seqs == 256


def test_unknown_keyword_and_bad_assignment_raise():
    with pytest.raises(ValidationError, match="blok_size"):
        config.CacheSettings(blok_size=8)
    cache = config.CacheSettings()
    with pytest.raises(ValidationError, match="block_size"):
        cache.block_size = -1
