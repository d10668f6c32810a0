"""Unpacking the int32 words that GPTQ and AWQ checkpoints store their integers in.

Both formats pack ``32 // bits`` unsigned integers into each int32 word, the first value in
the lowest bits. GPTQ packs ``qweight`` along the input features (word row ``r`` holds input
rows ``r * pack .. r * pack + pack - 1``) and ``qzeros`` along the output features. AWQ's GEMM
packer packs both along the output features, in the interleaved order
:data:`AWQ_PACK_ORDER`: nibble ``i`` of word ``c`` holds output ``c * 8 + AWQ_PACK_ORDER[i]``.

GPTQ v1 checkpoints (``checkpoint_format: "gptq"``) store ``zero - 1``. The writers subtract
``0x11111111`` (4-bit) or ``0x01010101`` (8-bit) from the whole packed word, so a zero of 0
borrows from the next field up; adding the same constant back to the whole word (not field by
field) recovers every field exactly.
"""

from __future__ import annotations

import torch

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
WORD_MASK = (1 << 32) - 1


def pack_factor(bits: int) -> int:
    """How many ``bits``-bit values one int32 word holds."""
    return 32 // bits


def _fields(words: torch.Tensor, bits: int) -> torch.Tensor:
    """``words [...]`` -> ``[..., pack]`` unsigned fields, lowest bits first."""
    shifts = torch.arange(0, 32, bits, device=words.device, dtype=torch.int64)
    wide = words.to(torch.int64) & WORD_MASK
    return ((wide.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).to(torch.int32)


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """``[rows, cols]`` words packed along dim 0 -> ``[rows * pack, cols]`` values."""
    fields = _fields(words, bits)  # [rows, cols, pack]
    return fields.permute(0, 2, 1).reshape(-1, words.shape[1])


def unpack_cols(words: torch.Tensor, bits: int) -> torch.Tensor:
    """``[rows, cols]`` words packed along dim 1 -> ``[rows, cols * pack]`` values."""
    return _fields(words, bits).reshape(words.shape[0], -1)


def unpack_awq_cols(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Like :func:`unpack_cols`, undoing AutoAWQ's interleaved order (4-bit only)."""
    fields = _fields(words, bits)  # [rows, cols, 8]: field i holds output AWQ_PACK_ORDER[i]
    logical = torch.empty_like(fields)
    logical[..., list(AWQ_PACK_ORDER)] = fields
    return logical.reshape(words.shape[0], -1)


def gptq_v1_word_offset(bits: int) -> int:
    """The constant a v1 writer subtracted from each packed zero word (one per field)."""
    return sum(1 << shift for shift in range(0, 32, bits))


def gptq_v1_zeros_to_v2(words: torch.Tensor, bits: int) -> torch.Tensor:
    """v1 packed zeros (``zero - 1``, borrows included) -> v2 packed zeros, as int64 words."""
    return (words.to(torch.int64) + gptq_v1_word_offset(bits)) & WORD_MASK


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """``[rows, cols]`` values in ``[0, 2**bits)`` -> ``[ceil(rows / pack), cols]`` int32 words
    packed along dim 0, lowest bits first (the inverse of :func:`unpack_rows`; missing rows of
    the last word are 0)."""
    pack = pack_factor(bits)
    rows, cols = values.shape
    padded = torch.zeros(-(-rows // pack) * pack, cols, dtype=torch.int64, device=values.device)
    padded[:rows] = values
    shifts = torch.arange(0, 32, bits, device=values.device, dtype=torch.int64)
    words = (padded.view(-1, pack, cols) << shifts[:, None]).sum(dim=1)  # [rows / pack, cols]
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
