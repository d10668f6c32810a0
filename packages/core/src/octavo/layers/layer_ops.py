"""Faster implementations of layer ops (fused RMSNorm, rotary, SiLU-and-multiply, dense
products), picked per device and dtype.

Layers keep their torch code as the oracle and ask :func:`find_layer_op` for a faster one;
plugins provide them through the ``register_layer_ops`` hook: a :class:`LayerOps` subclass
that implements some of :data:`LAYER_OPS` (as static methods with the signatures below) and
says where it runs. The supported provider with the highest ``priority`` wins; providers with
a negative priority (for example Triton kernels under the CPU interpreter) are used only when
named in ``OCTAVO_LAYER_OPS``:

=====================  ===============================================================
``OCTAVO_LAYER_OPS``   which providers may serve an op
=====================  ===============================================================
unset                  every supported provider with priority >= 0
``triton``             only the named ones (a comma-separated list), any priority
``torch`` or empty     none: the torch code runs
=====================  ===============================================================
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch

logger = logging.getLogger(__name__)

LAYER_OPS_ENV = "OCTAVO_LAYER_OPS"

# op name -> its contract (every implementation must equal the torch code it replaces)
LAYER_OPS: dict[str, str] = {
    "rms_norm": "rms_norm(x, weight, eps) -> out, as octavo.layers.norm.rms_norm",
    "fused_add_rms_norm": "fused_add_rms_norm(x, residual, weight, eps) -> (out, x + residual), "
                          "as RMSNorm.forward(x, residual)",
    "rotary": "rotary(x, cos, sin, is_neox_style) -> a new tensor, as "
              "octavo.layers.rotary.apply_rotary",
    "silu_and_mul": "silu_and_mul(x) -> a new tensor [..., d] from x [..., 2 * d], as "
                    "octavo.layers.activation.silu_and_mul",
    "pack_linear": "pack_linear(weight) -> an octavo.layers.dense.PackedLinear whose "
                   "(x, bias) equals F.linear(x, weight, bias), or None to leave the weight "
                   "plain",
    "pack_int4_linear": "pack_int4_linear(codes, scales, zeros, g_idx) -> a PackedLinear whose "
                        "(x, bias) equals F.linear(x, W, bias) for the 4-bit weight W[o, i] = "
                        "scales[g_idx[i], o] * (codes[i, o] - zeros[g_idx[i], o]) (codes [in, "
                        "out] in [0, 16), g_idx non-decreasing), or None",
}


class LayerOps:
    """A provider of fast layer ops; override any of the ``LAYER_OPS`` static methods.

    ``supports(op, device, dtype)`` says where an implemented op runs; the default checks
    ``supported_devices`` and ``supported_dtypes``.
    """

    name: ClassVar[str]
    priority: ClassVar[int] = 0
    supported_devices: ClassVar[tuple[str, ...]] = ("cuda",)
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (
        torch.float32, torch.float16, torch.bfloat16)

    @classmethod
    def implemented_ops(cls) -> tuple[str, ...]:
        """The ops this provider overrides."""
        return tuple(op for op in LAYER_OPS if getattr(cls, op) is not getattr(LayerOps, op))

    @classmethod
    def supports(cls, op: str, device: torch.device | str, dtype: torch.dtype) -> bool:
        return (op in cls.implemented_ops() and torch.device(device).type in cls.supported_devices
                and dtype in cls.supported_dtypes)

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               is_neox_style: bool) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def pack_linear(weight: torch.Tensor) -> Any:
        raise NotImplementedError

    @staticmethod
    def pack_int4_linear(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                         g_idx: torch.Tensor) -> Any:
        raise NotImplementedError


# registry -> {(op, device type, dtype, OCTAVO_LAYER_OPS): implementation or None}
_chosen: weakref.WeakKeyDictionary[Any, dict[tuple, Callable | None]] = (
    weakref.WeakKeyDictionary())


def find_layer_op(op: str, x: torch.Tensor) -> Callable | None:
    """The registered implementation of ``op`` for ``x``'s device and dtype, or None (torch).

    The choice is made once per (op, device type, dtype, ``OCTAVO_LAYER_OPS``) and cached.
    A lookup still costs several microseconds (the plugin manager, the environment), as much
    as a small op: modules (``RMSNorm``, ``GatedActivation``) keep their choice from their
    first forward in a dtype, so set ``OCTAVO_LAYER_OPS`` before running a model.
    """
    from octavo.plugins import layer_ops

    registry = layer_ops()
    allowed = os.environ.get(LAYER_OPS_ENV)
    key = (op, x.device.type, x.dtype, allowed)
    chosen = _chosen.setdefault(registry, {})
    if key not in chosen:
        chosen[key] = _choose(registry, op, x.device, x.dtype, allowed)
    return chosen[key]


def _choose(registry: Any, op: str, device: torch.device, dtype: torch.dtype,
            allowed: str | None) -> Callable | None:
    if op not in LAYER_OPS:
        raise ValueError(f"unknown layer op {op!r}; known: {', '.join(LAYER_OPS)}")
    names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    best = None
    for name in registry:
        if names is not None and name not in names:
            continue
        try:
            provider = registry.get(name)
        except Exception as exc:  # a broken optional provider must not stop the model
            logger.warning("layer ops %r could not be loaded: %s", name, exc)
            continue
        if names is None and provider.priority < 0:
            continue
        if provider.supports(op, device, dtype) and (best is None
                                                     or provider.priority > best.priority):
            best = provider
    return None if best is None else getattr(best, op)
