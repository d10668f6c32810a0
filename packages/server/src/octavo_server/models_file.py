"""Which models ``octavo serve`` serves: ``--model`` (repeated) and a TOML models file.

```toml
memory_budget_gib = 8        # evict idle models beyond this (the option overrides it)
idle_unload_s = 900          # unload a model nobody used for this long

[defaults]                   # engine options of every model
device = "cpu"

[[models]]
name = "llama"               # the name clients send (default: the path)
path = "/models/llama-3.2-1b"
aliases = ["default"]
pinned = true                # never evicted nor unloaded when idle
preload = true               # load at start-up instead of on the first request
memory_gib = 2.5             # the estimate before its first load (default: from its files)
dtype = "bfloat16"           # any other key is an engine option of this model
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from octavo.entrypoints.llm import engine_config_from_kwargs
from octavo.entrypoints.model_manager import ModelSpec

_MODEL_KEYS = {"name", "path", "aliases", "pinned", "preload", "memory_gib"}
_TOP_KEYS = {"memory_budget_gib", "idle_unload_s", "defaults", "models"}


class ModelsFileError(ValueError):
    """The models file (or the ``--model`` list) is not valid; the message says where."""


@dataclass
class ModelsConfig:
    specs: list[ModelSpec] = field(default_factory=list)
    memory_budget_gib: float | None = None
    idle_unload_s: float | None = None


def specs_from_options(models: list[str | None], names: list[str], options: dict[str, Any]
                       ) -> list[ModelSpec]:
    """One spec per ``--model``, named by the ``--served-model-name`` in the same place."""
    if names and len(names) != len(models):
        raise ModelsFileError(f"{len(models)} --model but {len(names)} --served-model-name: "
                              "give one name per model, in the same order")
    from octavo_server.models import DEMO_MODEL_NAME

    return [ModelSpec(name or model or DEMO_MODEL_NAME, model, dict(options))
            for model, name in zip(models, names or [None] * len(models))]


def read_models_file(path: str | Path, options: dict[str, Any]) -> ModelsConfig:
    """The file's models, each with ``options`` (the command line's engine options) beneath
    its ``[defaults]`` and its own keys."""
    import tomllib  # Python 3.11+

    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelsFileError(f"{path}: {exc}") from exc
    _no_unknown(data, _TOP_KEYS, str(path))
    defaults = {**options, **data.get("defaults", {})}
    config = ModelsConfig(memory_budget_gib=_positive(data, "memory_budget_gib", path),
                          idle_unload_s=_positive(data, "idle_unload_s", path))
    for index, entry in enumerate(data.get("models", [])):
        config.specs.append(_spec(entry, defaults, f"{path}: models[{index}]"))
    if not config.specs:
        raise ModelsFileError(f"{path}: no [[models]]")
    return config


def _spec(entry: dict[str, Any], defaults: dict[str, Any], where: str) -> ModelSpec:
    if "path" not in entry:
        raise ModelsFileError(f"{where}: needs a path")
    engine = {**defaults, **{k: v for k, v in entry.items() if k not in _MODEL_KEYS}}
    try:
        engine_config_from_kwargs(entry["path"], **engine)  # checks every option, loads nothing
    except (TypeError, ValueError) as exc:
        raise ModelsFileError(f"{where}: {exc}") from exc
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ModelsFileError(f"{where}: aliases must be a list of names")
    return ModelSpec(str(entry.get("name", entry["path"])), str(entry["path"]), engine,
                     aliases=tuple(aliases), pinned=bool(entry.get("pinned", False)),
                     preload=bool(entry.get("preload", False)),
                     memory_gib=entry.get("memory_gib"))


def _positive(data: dict[str, Any], key: str, path) -> float | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, (int, float)) or value <= 0):
        raise ModelsFileError(f"{path}: {key} must be a positive number")
    return value


def _no_unknown(data: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelsFileError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
