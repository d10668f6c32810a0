"""Find a checkpoint's quantization config and build its registered quantization method.

Quantized checkpoints state their quantization in one of three places, checked in order:
``config.json``'s ``quantization_config`` (transformers, gptqmodel, AutoAWQ today),
``quantize_config.json`` (auto-gptq and gptqmodel; old auto-gptq files lack ``quant_method``,
which then means ``"gptq"``) and ``quant_config.json`` (old AutoAWQ: ``w_bit``, ``q_group_size``,
``version``; ``quant_method`` defaults to ``"awq"``). Errors name the file they came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from octavo.layers.quantization import UnquantizedMethod
from octavo.plugins import quantization_methods

# side file -> the quant_method its writers leave implicit
SIDE_FILES = (("quantize_config.json", "gptq"), ("quant_config.json", "awq"))


def find_quantization_config(config: Any,
                             folder: Path | None) -> tuple[dict[str, Any], str] | None:
    """(the quantization config, the file it came from), or None for a dense checkpoint."""
    embedded = getattr(config, "quantization_config", None)
    if embedded:
        if not isinstance(embedded, dict):
            embedded = embedded.to_dict()
        where = str(folder / "config.json") if folder is not None else "config.json"
        return dict(embedded), where
    for name, implied_method in SIDE_FILES if folder is not None else ():
        path = folder / name
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
            raw.setdefault("quant_method", implied_method)
            return raw, str(path)
    return None


def quantization_method_for(config: Any, folder: Path | None, requested: str | None = None):
    """The quantization method a checkpoint asks for, built from its config; None if dense.

    ``requested`` (``--quantization``) names the registered method the checkpoint must use
    (``"none"``: a dense checkpoint): an unknown name, or one that is not the checkpoint's
    ``quant_method``, is a one-line ValueError.
    """
    registry = quantization_methods()
    if requested is not None and requested not in registry:
        raise ValueError(f"unknown quantization method {requested!r} (--quantization, "
                         f"OCTAVO_QUANTIZATION); registered: {_names(registry)}")
    found = find_quantization_config(config, folder)
    if found is None:
        if requested not in (None, UnquantizedMethod.name):
            raise ValueError(f"--quantization {requested}: the checkpoint is not quantized "
                             "(no quantization_config in config.json, no quantize_config.json "
                             "or quant_config.json)")
        return None
    raw, where = found
    method = raw.get("quant_method")
    if requested is not None and requested != method:
        raise ValueError(f"--quantization {requested} does not match the checkpoint's "
                         f"quant_method {method!r} ({where})")
    if method not in registry:
        raise ValueError(f"{where}: quantization method {method!r} is not supported; "
                         f"registered: {_names(registry)}; {registry.install_hint()}")
    try:
        return registry.get(method).from_config(raw)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _names(registry) -> str:
    return ", ".join(sorted(registry)) or "none"
