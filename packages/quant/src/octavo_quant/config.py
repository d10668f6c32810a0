"""Quantization configs of GPTQ and AWQ checkpoints, read from any of their spellings.

A checkpoint states its quantization in ``config.json``'s ``quantization_config`` (what
transformers, gptqmodel and AutoAWQ write today), in ``quantize_config.json`` (auto-gptq and
gptqmodel) or in ``quant_config.json`` (old AutoAWQ: ``w_bit``, ``q_group_size``). The model
loader finds the file; this module turns its dict into a validated config, or a
:class:`QuantConfigError` saying which field Octavo does not support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_BITS = (4, 8)
GPTQ_FORMATS = ("gptq", "gptq_v2")


class QuantConfigError(ValueError):
    """A quantization config Octavo cannot run (an unsupported bit width, format or field)."""


def _field(raw: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` present in ``raw`` (one field, several spellings)."""
    for name in names:
        if name in raw and raw[name] is not None:
            return raw[name]
    return default


def _bits(raw: dict[str, Any], method: str) -> int:
    bits = _field(raw, "bits", "w_bit", "wbits")
    if bits not in SUPPORTED_BITS:
        raise QuantConfigError(f"{method}: bits={bits!r} is not supported (supported: "
                               f"{', '.join(map(str, SUPPORTED_BITS))})")
    return int(bits)


def _group_size(raw: dict[str, Any], method: str) -> int:
    group_size = int(_field(raw, "group_size", "q_group_size", default=-1))
    if group_size != -1 and group_size <= 0:
        raise QuantConfigError(f"{method}: group_size={group_size} must be positive or -1")
    return group_size


@dataclass(frozen=True)
class GPTQConfig:
    """A GPTQ checkpoint's quantization.

    Attributes:
        group_size: input features per scale/zero group; -1 means one group per output row.
        desc_act: the checkpoint was quantized in activation order (``g_idx`` is arbitrary).
        checkpoint_format: ``"gptq"`` (v1: stored zero = zero - 1) or ``"gptq_v2"``.
    """

    bits: int
    group_size: int
    desc_act: bool
    sym: bool
    checkpoint_format: str

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GPTQConfig:
        fmt = str(_field(raw, "checkpoint_format", "format", default="gptq")).lower()
        if fmt not in GPTQ_FORMATS:
            raise QuantConfigError(f"gptq: checkpoint_format={fmt!r} is not supported "
                                   f"(supported: {', '.join(GPTQ_FORMATS)})")
        if raw.get("is_marlin_format"):
            raise QuantConfigError("gptq: Marlin-format checkpoints are not supported")
        return cls(bits=_bits(raw, "gptq"), group_size=_group_size(raw, "gptq"),
                   desc_act=bool(_field(raw, "desc_act", default=False)),
                   sym=bool(_field(raw, "sym", default=True)), checkpoint_format=fmt)


@dataclass(frozen=True)
class AWQConfig:
    """An AWQ GEMM checkpoint's quantization (AutoAWQ's packing: 4-bit, zero point)."""

    bits: int
    group_size: int
    zero_point: bool
    modules_to_not_convert: tuple[str, ...]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AWQConfig:
        version = str(_field(raw, "version", "format", default="gemm")).lower()
        if version != "gemm":
            raise QuantConfigError(f"awq: version={version!r} is not supported (supported: "
                                   "gemm)")
        bits = _bits(raw, "awq")
        if bits != 4:
            raise QuantConfigError(f"awq: bits={bits} is not supported (AWQ GEMM is 4-bit)")
        if not _field(raw, "zero_point", default=True):
            raise QuantConfigError("awq: zero_point=false is not supported")
        group_size = _group_size(raw, "awq")
        if group_size == -1:
            raise QuantConfigError("awq: group_size=-1 is not supported")
        skip = tuple(_field(raw, "modules_to_not_convert", default=()) or ())
        return cls(bits=bits, group_size=group_size, zero_point=True,
                   modules_to_not_convert=skip)
