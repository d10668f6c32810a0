"""Activations by HF ``hidden_act`` name: gated ones over a fused ``[gate | up]`` projection,
and plain ones for two-matrix MLPs (GPT-2, OPT, GPT-NeoX, Falcon, MPT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from octavo.layers.layer_ops import find_layer_op


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` where ``x = [gate | up]`` on the last dim (the torch oracle)."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def fast_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """:func:`silu_and_mul` by a registered faster op for ``x``'s device and dtype if there is
    one (see :mod:`octavo.layers.layer_ops`), else the torch code."""
    return (find_layer_op("silu_and_mul", x) or silu_and_mul)(x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``gelu_tanh(gate) * up`` where ``x = [gate | up]`` on the last dim."""
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d], approximate="tanh") * x[..., d:]


# gated activation -> the layer op (octavo.layers.layer_ops) a faster provider may implement
_GATED_LAYER_OPS = {"silu": "silu_and_mul", "swish": "silu_and_mul"}

_GATED = {
    "silu": silu_and_mul,
    "swish": silu_and_mul,
    "gelu_pytorch_tanh": gelu_tanh_and_mul,
}


class SiluAndMul(nn.Module):
    """``[..., 2 * d] -> [..., d]``: ``silu(x[..., :d]) * x[..., d:]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_silu_and_mul(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (HF's ``gelu_new``, ``gelu_fast``, ``gelu_pytorch_tanh``)."""
    return F.gelu(x, approximate="tanh")


_PLAIN = {
    "gelu": F.gelu,
    "gelu_new": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class Activation(nn.Module):
    """An elementwise activation chosen by HF's ``hidden_act`` / ``activation_function`` name."""

    functions: dict = _PLAIN
    kind = "activation"

    def __init__(self, hidden_act: str) -> None:
        super().__init__()
        if hidden_act not in self.functions:
            raise ValueError(f"unsupported {self.kind} {hidden_act!r}; "
                             f"supported: {', '.join(sorted(self.functions))}")
        self.hidden_act = hidden_act
        self.fn = self.functions[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.hidden_act


class GatedActivation(Activation):
    """A gated activation chosen by HF's ``hidden_act`` name: ``[..., 2 * d] -> [..., d]``."""

    functions = _GATED
    kind = "gated activation"

    def __init__(self, hidden_act: str) -> None:
        super().__init__(hidden_act)
        self._fn_dtype: torch.dtype | None = None  # the dtype self._fast was chosen for
        self._fast = self.fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype is not self._fn_dtype:
            # A registered faster op for x's device and dtype, else the torch code; chosen at
            # the first forward in a dtype and kept (a lookup per call costs as much as the op).
            op = _GATED_LAYER_OPS.get(self.hidden_act)
            self._fast = (op is not None and find_layer_op(op, x)) or self.fn
            self._fn_dtype = x.dtype
        return self._fast(x)
