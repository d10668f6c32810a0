"""Checkpoint name maps: HF tensor names (and fused layouts) onto a model's parameters.

A family lists :class:`WeightRule` s whose names are templates: ``{i}`` stands for a layer
index and ``{p}`` for a parameter's own name (``weight``, ``bias``, or what a quantization
method stores, such as ``qweight`` and ``scales``). For example::

    WeightRule("transformer.h.{i}.attn.c_attn.{p}", "layers.{i}.attn.qkv_proj.{p}",
               transform=conv1d_to_linear)

:func:`load_mapped_weights` routes each checkpoint tensor through the first rule that matches
it, and fails with the checkpoint's own tensor names when a tensor is unexpected, has the
wrong shape, or is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from octavo.layers import UnknownWeightError, default_weight_loader
from octavo.layers.weight_loading import is_optional

_FIELDS = {"i": r"\d+", "p": r"[A-Za-z_]\w*"}
DENSE_LEAVES = ("weight", "bias")  # what layout transforms are written for


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # text, field, text, field, ...
    regex = "".join(re.escape(part) if k % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})"
                    for k, part in enumerate(parts))
    return re.compile(regex)


@dataclass(frozen=True)
class WeightRule:
    """Checkpoint tensors named like ``source`` go to the parameter named like ``target``.

    Attributes:
        target: None means the tensor is known but not used (buffers some checkpoints carry).
        shard: the shard id of a merged parameter (``"q"``, ``"k"``, ``"v"``, or an index).
        transform: applied to the checkpoint tensor first (a transpose, a head reordering);
            written for dense ``weight`` and ``bias`` tensors, so other (quantized) tensors
            through a transforming rule are refused.
    """

    source: str
    target: str | None
    shard: object = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def match_source(self, name: str) -> re.Match | None:
        return _template_regex(self.source).fullmatch(name)

    def source_of(self, param_name: str) -> str | None:
        """The checkpoint name that fills ``param_name`` through this rule, if any."""
        if self.target is None:
            return None
        match = _template_regex(self.target).fullmatch(param_name)
        return self.source.format(**match.groupdict()) if match else None


class MissingWeightError(ValueError):
    """The checkpoint lacks tensors the model needs."""


def load_mapped_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    rules: Sequence[WeightRule],
    checkpoint_prefix: str = "",
) -> set[str]:
    """Load ``weights`` into ``model`` through ``rules``; return the filled parameter names.

    A name that matches no rule is retried under ``checkpoint_prefix`` (some checkpoints drop
    the base model's prefix, e.g. GPT-2's ``h.0.ln_1.weight``).

    Raises:
        UnknownWeightError: a tensor that no rule knows, or one meant for a parameter the model
            does not have (a layer past ``num_hidden_layers``, a bias the config turns off).
        ValueError: a tensor whose shape does not fit (the message names the tensor).
        MissingWeightError: after all tensors, the checkpoint names every tensor it lacked.
    """
    params = dict(model.named_parameters())
    owner = type(model).__name__
    filled: set[tuple[str, object]] = set()  # (parameter, shard)
    for name, tensor in weights:
        rule, match = _find_rule(rules, name, checkpoint_prefix)
        if rule is None:
            raise UnknownWeightError(f"checkpoint tensor {name!r} is not a tensor of {owner}")
        if rule.target is None:
            continue
        target = rule.target.format(**match.groupdict())
        param = params.get(target)
        if param is None:
            raise UnknownWeightError(f"checkpoint tensor {name!r} has no parameter in {owner} "
                                     f"(looked for {target!r}; check the config)")
        loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            if rule.transform is not None:
                if target.rsplit(".", 1)[-1] not in DENSE_LEAVES:
                    raise ValueError("only dense weight and bias tensors can be converted from "
                                     "this checkpoint layout")
                tensor = rule.transform(tensor)
            if rule.shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, rule.shard)
        except ValueError as exc:
            raise ValueError(f"checkpoint tensor {name!r}: {exc}") from exc
        filled.add((target, rule.shard))
    required = [name for name, param in params.items() if not is_optional(param)]
    missing = missing_checkpoint_names(required, rules, filled)
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        # the loader's own wording for a checkpoint short of weights, in checkpoint names
        raise MissingWeightError(f"checkpoint for {owner} lacks {len(missing)} model weights: "
                                 f"{shown}")
    return {param for param, _ in filled}


def _find_rule(rules: Sequence[WeightRule], name: str,
               prefix: str) -> tuple[WeightRule | None, re.Match | None]:
    candidates = [name]
    if prefix and not name.startswith(prefix + "."):
        candidates.append(f"{prefix}.{name}")
    for candidate in candidates:
        for rule in rules:
            match = rule.match_source(candidate)
            if match:
                return rule, match
    return None, None


def missing_checkpoint_names(params: Iterable[str], rules: Sequence[WeightRule],
                             filled: set[tuple[str, object]]) -> list[str]:
    """The checkpoint names of every (parameter, shard) of ``params`` not in ``filled``.

    Where several rules fill the same shard (a tensor renamed between checkpoint versions),
    any of them will do and the message offers each: ``"embed_out.weight or lm_head.weight"``.
    """
    wanted: dict[tuple[str, object], list[str]] = {}
    for param in params:
        for rule in rules:
            source = rule.source_of(param)
            if source is not None:
                wanted.setdefault((param, rule.shard), []).append(source)
    return sorted(" or ".join(names) for key, names in wanted.items() if key not in filled)


# -- layout transforms --------------------------------------------------------------------------
def conv1d_to_linear(tensor: torch.Tensor) -> torch.Tensor:
    """GPT-2's ``Conv1D`` stores ``[in, out]``; linear layers want ``[out, in]`` (bias as is)."""
    return tensor.t() if tensor.dim() == 2 else tensor


def grouped_qkv_to_merged(num_heads: int, num_kv_heads: int,
                          head_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transform from a per-group fused QKV to ``[q | k | v]``.

    The checkpoint's output rows come in ``num_kv_heads`` groups, each holding the group's
    query heads, then its key head, then its value head (GPT-NeoX and Falcon's
    ``query_key_value``; with as many groups as heads this is the per-head ``[q, k, v]``
    interleaving of GPT-NeoX).
    """
    group = num_heads // num_kv_heads

    def transform(tensor: torch.Tensor) -> torch.Tensor:  # [(H + 2 KH) * D, ...]
        expected = (num_heads + 2 * num_kv_heads) * head_size
        if tensor.shape[0] != expected:
            raise ValueError(f"fused qkv has {tensor.shape[0]} rows, expected {expected}")
        rest = tensor.shape[1:]
        grouped = tensor.reshape(num_kv_heads, group + 2, head_size, *rest)
        q = grouped[:, :group].reshape(num_heads * head_size, *rest)
        k = grouped[:, group].reshape(num_kv_heads * head_size, *rest)
        v = grouped[:, group + 1].reshape(num_kv_heads * head_size, *rest)
        return torch.cat([q, k, v])

    return transform
