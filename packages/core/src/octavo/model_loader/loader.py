"""Load a model from disk: HF config, tokenizer, model class, and weights streamed into it.

``load_model(settings)`` is the one call the engine makes; the smaller functions are public
for tools and tests that need one step.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn

from octavo.attention import select_attention_backend
from octavo.config import ModelSettings
from octavo.layers.weight_loading import required_parameter_names
from octavo.model_loader import gguf_cache
from octavo.model_loader.quant_config import quantization_method_for
from octavo.model_loader.source import ModelSource, demo_model_path, resolve_model_source
from octavo.model_loader.weights import WeightFormat
from octavo.modeling import CausalLM, KVCacheSpec, ModelContext, ParallelConfig
from octavo.platforms import Platform, platform_for, resolve_platform
from octavo.plugins import models, weight_formats

__all__ = [
    "LoadedModel", "ModelPlan", "ModelSource", "build_model", "check_tensor_parallel",
    "demo_model_path", "eos_token_ids", "find_weight_files", "load_hf_config", "load_model",
    "load_tokenizer", "load_weights", "model_class", "plan_model", "resolve_device",
    "resolve_dtype", "resolve_model_source",
]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Files that match a weights pattern but are training state, not model weights.
_NOT_WEIGHTS = {"training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt"}
# Random initializers skipped while building a model whose weights are loaded next.
_RANDOM_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                 "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_")
_build_lock = threading.Lock()


@dataclass
class LoadedModel:
    """A model ready to run, with what the engine needs to know about it."""

    model: CausalLM  # eval mode, on ``device``, weights in ``dtype``
    hf_config: Any
    tokenizer: Any  # a transformers tokenizer
    kv_spec: KVCacheSpec
    max_model_len: int
    eos_token_ids: frozenset[int]
    dtype: torch.dtype
    device: torch.device
    attention_backend: type  # a subclass of octavo.attention.AttentionBackend
    source: ModelSource


# -- config and tokenizer -------------------------------------------------------------------
def load_hf_config(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The HF config; ``architectures`` is filled from ``model_type`` when absent (GGUF)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    def convert():
        config = _auto_config(source, trust_remote_code)
        if not getattr(config, "architectures", None):
            arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
            if arch is None:
                raise ValueError(
                    f"model {source.name!r}: config has no architectures and model_type "
                    f"{config.model_type!r} has no causal-LM class in transformers")
            config.architectures = [arch]
        return config

    if not source.gguf_file:
        return convert()
    return gguf_cache.load_converted(source.path, "config", convert, AutoConfig.from_pretrained)


def _auto_config(source: ModelSource, trust_remote_code: bool) -> Any:
    """``AutoConfig``, or for a remote-code checkpoint (QWen, Baichuan: a ``model_type``
    transformers lacks) whose architecture a plugin registers, a plain ``PretrainedConfig`` of
    its config.json: Octavo runs such models without their remote code."""
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    try:
        return AutoConfig.from_pretrained(
            str(source.folder), trust_remote_code=trust_remote_code, **source.hf_kwargs)
    except (ValueError, OSError):
        path = source.folder / "config.json"
        if source.gguf_file or not path.is_file():
            raise
        raw = json.loads(path.read_text())
        if (raw.get("model_type") in CONFIG_MAPPING_NAMES
                or (raw.get("architectures") or [None])[0] not in models()):
            raise
        return PretrainedConfig(**raw)


def load_tokenizer(source: ModelSource, tokenizer: str | None = None,
                   trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, or the one at ``tokenizer`` (folder, GGUF file or hub id)."""
    from transformers import AutoTokenizer

    location, kwargs = str(source.folder), source.hf_kwargs
    gguf_path = source.path if source.gguf_file else None
    if tokenizer is not None:
        path = Path(tokenizer).expanduser()
        gguf_path = path if path.is_file() and path.suffix == ".gguf" else None
        location = str(path.parent if gguf_path else path) if path.exists() else tokenizer
        kwargs = {"gguf_file": path.name} if gguf_path else {}
    def convert():
        tok = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code,
                                            **kwargs)
        if gguf_path is not None and not getattr(tok, "chat_template", None):
            tok.chat_template = read_gguf_string(gguf_path, "tokenizer.chat_template")
        return tok

    if gguf_path is None:
        return convert()
    return gguf_cache.load_converted(gguf_path, "tokenizer", convert,
                                     AutoTokenizer.from_pretrained)


def read_gguf_string(path: Path, key: str) -> str | None:
    """A string metadata field of a GGUF file, or None when absent."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get(key)
    return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def eos_token_ids(config: Any, tokenizer: Any, folder: Path | None = None) -> frozenset[int]:
    """End-of-sequence ids from the config, the tokenizer and ``generation_config.json``."""
    ids = set(_as_ids(getattr(config, "eos_token_id", None)))
    ids |= _as_ids(getattr(tokenizer, "eos_token_id", None))
    gen_path = folder / "generation_config.json" if folder is not None else None
    if gen_path is not None and gen_path.is_file():
        ids |= _as_ids(json.loads(gen_path.read_text()).get("eos_token_id"))
    return frozenset(ids)


def _as_ids(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}


# -- device, dtype, model class -------------------------------------------------------------
def resolve_device(device: str) -> torch.device:
    """The ``torch.device`` of the registered platform ``device`` names (``auto``: the
    available one with the highest priority, CUDA when there is a GPU, else the CPU)."""
    return resolve_platform(device).device()


def resolve_dtype(dtype: str, device: torch.device, config: Any,
                  platform: Platform | None = None) -> torch.dtype:
    """``auto``: the platform's choice (``platform``, else the one driving ``device``): on the
    CPU the dtype whose products this CPU runs fastest (:func:`octavo.cpu.fastest_cpu_dtype`:
    bfloat16 only where it has bf16 product instructions and bfloat16 measures faster); on CUDA
    the checkpoint's float16/bfloat16, else bfloat16."""
    if dtype != "auto":
        return _DTYPES[dtype]
    return (platform or platform_for(device)).default_dtype(config)


def model_class(config: Any) -> type[CausalLM]:
    """The registered model class for ``config.architectures[0]``."""
    registry = models()
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch not in registry:
        known = ", ".join(sorted(registry)) or f"none: {registry.install_hint()}"
        raise ValueError(f"architecture {arch!r} is not supported; registered architectures: "
                         f"{known}")
    return registry.get(arch)


# -- building and filling the model ---------------------------------------------------------
@contextmanager
def _no_random_init(dtype: torch.dtype) -> Iterator[None]:
    """Build with ``dtype`` as the default and the random ``torch.nn.init`` functions off."""
    saved_dtype = torch.get_default_dtype()
    saved_inits = {name: getattr(nn.init, name) for name in _RANDOM_INITS}
    with _build_lock:
        torch.set_default_dtype(dtype)
        for name in _RANDOM_INITS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        try:
            yield
        finally:
            for name, fn in saved_inits.items():
                setattr(nn.init, name, fn)
            torch.set_default_dtype(saved_dtype)


def build_model(cls: type[CausalLM], config: Any, ctx: ModelContext) -> CausalLM:
    """Allocate the model on ``ctx.device`` in ``ctx.dtype`` without random initialization."""
    with _no_random_init(ctx.dtype), torch.device(ctx.device):
        return cls(config, ctx)


def find_weight_files(source: ModelSource) -> tuple[WeightFormat, list[Path]]:
    """The weight format and files of a checkpoint.

    A single-file source uses the first registered pattern matching its name. A folder uses
    the first registered pattern (safetensors before bin) with matching files; a
    ``<pattern>.index.json`` (sharded checkpoints) names the files when present.
    """
    registry = weight_formats()
    if source.path.is_file():
        for pattern in registry:
            if fnmatch(source.path.name, pattern):
                return registry.get(pattern)(), [source.path]
        raise ValueError(f"no weight format reads {source.path.name!r}; known patterns: "
                         f"{', '.join(registry)}")
    for pattern in registry:
        files = _checkpoint_files(source.path, pattern)
        if files:
            return registry.get(pattern)(), files
    raise ValueError(f"model folder {str(source.path)!r} holds no weights; expected files "
                     f"matching one of: {', '.join(registry)}")


def _checkpoint_files(folder: Path, pattern: str) -> list[Path]:
    index = sorted(folder.glob(pattern + ".index.json"))
    if index:
        weight_map = json.loads(index[0].read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    return sorted(p for p in folder.glob(pattern) if p.name not in _NOT_WEIGHTS)


def load_weights(model: CausalLM, fmt: WeightFormat, files: list[Path], config: Any) -> None:
    """Stream every tensor of ``files`` into ``model``; fail if a parameter was not filled."""
    tensors = chain.from_iterable(fmt.iter_weights(path, config) for path in files)
    where = ", ".join(str(f) for f in files)
    try:
        with torch.no_grad():
            loaded = model.load_weights(tensors)
    except (ValueError, KeyError) as exc:  # a tensor the model refused: name the files too
        raise type(exc)(f"checkpoint {where}: {exc}") from exc
    missing = sorted(required_parameter_names(model) - set(loaded))
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"checkpoint {where} lacks {len(missing)} model weights: {shown}")


@dataclass
class ModelPlan:
    """What a model is before any weights load: enough for a driver that runs no rank itself
    (tensor parallelism), and the first half of :func:`load_model`."""

    source: ModelSource
    hf_config: Any  # adapted by the model class
    tokenizer: Any
    model_class: type[CausalLM]
    kv_spec: KVCacheSpec  # the whole model's, before any tensor-parallel split
    max_model_len: int
    eos_token_ids: frozenset[int]
    dtype: torch.dtype
    device: torch.device
    attention_backend: type


def plan_model(settings: ModelSettings) -> ModelPlan:
    """Resolve the model that ``settings`` names: config, tokenizer, class, device and dtype."""
    require_model_plugins()
    source = resolve_model_source(settings.model)
    config = load_hf_config(source, settings.trust_remote_code)
    tokenizer = load_tokenizer(source, settings.tokenizer, settings.trust_remote_code)
    platform = resolve_platform(settings.device)
    device = platform.device()
    dtype = resolve_dtype(settings.dtype, device, config, platform)
    cls = model_class(config)
    config = cls.adapt_config(config)  # once: the cache spec and the model get this config
    kv_spec = cls.kv_cache_spec(config)
    backend = select_attention_backend(device, dtype, kv_spec.head_size,
                                       settings.attention_backend,
                                       preferred=platform.attention_backends)
    return ModelPlan(source=source, hf_config=config, tokenizer=tokenizer, model_class=cls,
                     kv_spec=kv_spec, max_model_len=_max_model_len(settings.max_model_len, config),
                     eos_token_ids=eos_token_ids(config, tokenizer, source.folder), dtype=dtype,
                     device=device, attention_backend=backend)


def check_tensor_parallel(plan: ModelPlan, tensor_parallel_size: int) -> None:
    """ValueError, in one line, when the model's heads cannot be split over the ranks: the
    attention heads must divide by them; the KV heads must divide by them, or divide them
    (then each KV head is replicated on ``tensor_parallel_size / num_kv_heads`` ranks)."""
    tp = tensor_parallel_size
    if tp == 1:
        return
    heads = getattr(plan.hf_config, "num_attention_heads", None)
    if heads is not None and heads % tp:
        raise ValueError(f"tensor_parallel_size {tp} does not divide the model's {heads} "
                         f"attention heads; choose a divisor of {heads}")
    kv_heads = plan.kv_spec.num_kv_heads
    if kv_heads % tp and tp % kv_heads:
        raise ValueError(f"tensor_parallel_size {tp} and the model's {kv_heads} KV heads: one "
                         "must divide the other (KV heads are split over the ranks, or "
                         "replicated when there are fewer of them than ranks)")


def load_model(settings: ModelSettings, parallel: ParallelConfig | None = None) -> LoadedModel:
    """Resolve, build and fill the model that ``settings`` names; with ``parallel``, this
    rank's shard (the caller set up the ``torch.distributed`` process group)."""
    plan = plan_model(settings)
    parallel = parallel or ParallelConfig()
    check_tensor_parallel(plan, parallel.tensor_parallel_size)
    ctx = ModelContext(attention_backend=plan.attention_backend, dtype=plan.dtype,
                       device=plan.device, parallel=parallel,
                       quantization=quantization_method_for(plan.hf_config, plan.source.folder))
    fmt, files = find_weight_files(plan.source)  # before building: fail fast on an empty folder
    model = build_model(plan.model_class, plan.hf_config, ctx)
    load_weights(model, fmt, files, plan.hf_config)
    model.eval()
    return LoadedModel(
        model=model, hf_config=plan.hf_config, tokenizer=plan.tokenizer,
        kv_spec=plan.kv_spec.for_rank(parallel), max_model_len=plan.max_model_len,
        eos_token_ids=plan.eos_token_ids, dtype=plan.dtype, device=plan.device,
        attention_backend=plan.attention_backend, source=plan.source)


def require_model_plugins() -> None:
    """Fail in one line, naming what to install, when no plugin registers model families or
    weight formats (core alone has neither)."""
    for registry in (models(), weight_formats()):
        if not registry:
            raise ValueError(f"no {registry.kind} is registered, so no model can load: "
                             f"{registry.install_hint()}")


def _max_model_len(requested: int | None, config: Any) -> int:
    context = getattr(config, "max_position_embeddings", None)
    if requested is None:
        if context is None:
            raise ValueError("the model config has no max_position_embeddings; set max_model_len")
        return int(context)
    if requested <= 0:
        raise ValueError(f"max_model_len must be positive, got {requested}")
    if context is not None and requested > context:
        logger.warning("max_model_len %d exceeds the model's max_position_embeddings %d",
                       requested, context)
    return requested
