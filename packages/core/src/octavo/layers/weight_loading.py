"""Loading HF-named checkpoint tensors into a model built from Octavo layers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from octavo.layers.linear import default_weight_loader


class UnknownWeightError(KeyError):
    """A checkpoint tensor has no parameter to go to."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class StackedParam:
    """HF's ``.{part}.`` tensors go into shard ``shard_id`` of the merged ``.{merged}.`` param.

    Example: ``StackedParam("qkv_proj", "q_proj", "q")``.
    """

    merged: str
    part: str
    shard_id: object


def load_hf_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    stacked: Sequence[StackedParam] = (),
    skip: Callable[[str], bool] = lambda name: False,
) -> set[str]:
    """Route each ``(hf_name, tensor)`` to its parameter's ``weight_loader``.

    Names ``skip`` accepts are ignored. Returns the names (as ``model.named_parameters()``
    spells them) of the parameters that received data. Raises :class:`UnknownWeightError` for
    a name that matches no parameter.
    """
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        if skip(name):
            continue
        target, shard_id = name, None
        for rule in stacked:
            if f".{rule.part}." in name:
                target, shard_id = name.replace(f".{rule.part}.", f".{rule.merged}."), rule.shard_id
                break
        param = params.get(target)
        if param is None:
            raise UnknownWeightError(
                f"checkpoint tensor {name!r} matches no parameter of "
                f"{type(model).__name__} (looked for {target!r})")
        loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            if shard_id is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard_id)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        loaded.add(target)
    return loaded


def process_weights_after_loading(model: nn.Module) -> None:
    """Let each layer's quantization method repack its weights once loading is done."""
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)
