"""What weight loading shares across model families: its error type and the post-load step.

Mapping checkpoint names onto a model's parameters is the model package's business (the rule
tables of ``octavo_models.weight_map``).
"""

from __future__ import annotations

from torch import nn


def is_optional(param: object) -> bool:
    """Whether a checkpoint may omit ``param`` (its quantization method supplies a default;
    the ``optional`` loading hint of ``octavo.layers.quantization``)."""
    return bool(getattr(param, "optional", False))


def required_parameter_names(model: nn.Module) -> set[str]:
    """The names of ``model``'s parameters that every checkpoint must fill."""
    return {name for name, param in model.named_parameters() if not is_optional(param)}


class UnknownWeightError(KeyError):
    """A checkpoint tensor has no parameter to go to."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def process_weights_after_loading(model: nn.Module) -> None:
    """Let each layer's quantization method repack its weights once loading is done."""
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)
