"""How much memory one engine takes: an estimate before it loads, a measurement after.

The estimate is the checkpoint's weight files plus its KV cache as configured; the
measurement counts the bytes of every distinct tensor storage the loaded model and its KV
cache hold (packed copies of the weights included).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

GiB = 1 << 30
DEFAULT_CPU_KV_CACHE_GIB = 1.0  # the engine's own default on a CPU (engine/builder.py)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def estimate_bytes(model: str | None, options: dict[str, Any]) -> int:
    """Weights on disk plus the KV cache the options ask for (a hub id or the demo: 0 bytes
    of weights, so give such a model ``memory_gib``)."""
    return _weight_bytes(model) + _kv_cache_bytes(model, options)


def _weight_bytes(model: str | None) -> int:
    path = Path(model) if model else None
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir()
               if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES))


def _kv_cache_bytes(model: str | None, options: dict[str, Any]) -> int:
    if options.get("kv_cache_memory_gib") is not None:
        return int(options["kv_cache_memory_gib"] * GiB)
    blocks = options.get("num_gpu_blocks_override")
    config = _hf_config(model)
    if blocks is None or config is None:
        return int(DEFAULT_CPU_KV_CACHE_GIB * GiB)
    layers = config.get("num_hidden_layers") or config.get("n_layer") or 1
    heads = config.get("num_attention_heads") or config.get("n_head") or 1
    hidden = config.get("hidden_size") or config.get("n_embd") or heads
    kv_heads = config.get("num_key_value_heads") or heads
    per_token = 2 * layers * kv_heads * (hidden // heads) * 4  # K and V, float32 at most
    return blocks * options.get("block_size", 16) * per_token


def _hf_config(model: str | None) -> dict | None:
    if not model:
        return None
    path = Path(model) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def engine_tensor_bytes(llm) -> int:
    """Bytes of the distinct tensor storages of an ``AsyncLLM``'s model and KV cache."""
    runner = llm.engine.core.runner
    seen: dict[int, int] = {}
    for tensor in _module_tensors(runner.model):
        _count(tensor, seen)
    for key_cache, value_cache in runner.kv_caches:
        _count(key_cache, seen)
        _count(value_cache, seen)
    return sum(seen.values())


def _module_tensors(model: torch.nn.Module):
    for module in model.modules():
        yield from module.parameters(recurse=False)
        yield from module.buffers(recurse=False)
        for value in vars(module).values():  # packed weights kept as plain attributes
            if isinstance(value, torch.Tensor):
                yield value


def _count(tensor: torch.Tensor, seen: dict[int, int]) -> None:
    if tensor.is_meta:
        return
    if tensor.is_mkldnn:  # oneDNN's packed weights are opaque: no storage to ask
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
        return
    storage = tensor.untyped_storage()
    seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
