"""GGUF checkpoints (llama.cpp): dequantize every tensor and rename it to its HF name.

The rename is data: one :class:`GGUFArch` per llama.cpp architecture, mapping GGUF tensor
names (``blk.{bid}.attn_q``) to HF names (``model.layers.{bid}.self_attn.q_proj``); the
``.weight`` / ``.bias`` suffix carries over. Add an architecture by adding an entry to
:data:`GGUF_ARCHS`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from octavo.model_loader.weights import WeightFormat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFArch:
    """How one llama.cpp architecture names (and reshapes) its tensors.

    Attributes:
        names: GGUF base name (``{bid}`` for the block index) -> HF base name; a value of None
            marks a tensor HF does not have (skipped).
        permute_qk: llama.cpp's converter interleaved the rows of Q and K for its rotary
            layout; undo it (``LlamaForCausalLM`` conversions do this).
    """

    names: dict[str, str | None]
    permute_qk: bool = False


_LLAMA_NAMES: dict[str, str | None] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "rope_freqs": None,  # Llama 3.1 rope scaling factors; HF recomputes them from the config
    "blk.{bid}.attn_norm": "model.layers.{bid}.input_layernorm",
    "blk.{bid}.attn_q": "model.layers.{bid}.self_attn.q_proj",
    "blk.{bid}.attn_k": "model.layers.{bid}.self_attn.k_proj",
    "blk.{bid}.attn_v": "model.layers.{bid}.self_attn.v_proj",
    "blk.{bid}.attn_output": "model.layers.{bid}.self_attn.o_proj",
    "blk.{bid}.ffn_norm": "model.layers.{bid}.post_attention_layernorm",
    "blk.{bid}.ffn_gate": "model.layers.{bid}.mlp.gate_proj",
    "blk.{bid}.ffn_up": "model.layers.{bid}.mlp.up_proj",
    "blk.{bid}.ffn_down": "model.layers.{bid}.mlp.down_proj",
}

# llama.cpp ``general.architecture`` -> naming rules.
GGUF_ARCHS: dict[str, GGUFArch] = {
    "llama": GGUFArch(_LLAMA_NAMES, permute_qk=True),  # also Mistral, SmolLM, Yi
    "qwen2": GGUFArch(_LLAMA_NAMES),  # same names, QKV biases, no Q/K permutation
}

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def gguf_architecture(reader: GGUFReader) -> str:
    """The file's ``general.architecture`` string (``"llama"``)."""
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ValueError("GGUF file has no general.architecture field")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def hf_tensor_name(arch: GGUFArch, gguf_name: str) -> str | None:
    """Map ``blk.3.attn_q.weight`` to ``model.layers.3.self_attn.q_proj.weight``.

    Returns None for tensors to skip; raises KeyError for names the architecture lacks.
    """
    base, _, suffix = gguf_name.rpartition(".")  # suffix: weight | bias
    match = _BLOCK.match(base)
    key = f"blk.{{bid}}.{match.group(2)}" if match else base
    hf_base = arch.names[key]
    if hf_base is None:
        return None
    if match:
        hf_base = hf_base.format(bid=match.group(1))
    return f"{hf_base}.{suffix}"


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row interleave: per head, rows ``(dim, 2)`` -> ``(2, dim)``.

    ``weight``: ``[num_heads * head_size, ...]`` (a weight or a bias).
    """
    dim = weight.shape[0] // num_heads // 2
    # [num_heads, dim, 2, ...] -> [num_heads, 2, dim, ...]
    rows = weight.reshape(num_heads, dim, 2, *weight.shape[1:])
    return rows.swapaxes(1, 2).reshape(weight.shape)


class GGUFFormat(WeightFormat):
    """Reads a GGUF file, dequantizing each tensor to float (float32, or float16 when stored so)."""

    name = "gguf"

    def iter_weights(self, path: Path, config: Any) -> Iterator[tuple[str, torch.Tensor]]:
        reader = GGUFReader(path)
        arch_name = gguf_architecture(reader)
        arch = GGUF_ARCHS.get(arch_name)
        if arch is None:
            raise ValueError(f"GGUF architecture {arch_name!r} is not supported "
                             f"(supported: {', '.join(sorted(GGUF_ARCHS))})")
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        for tensor in reader.tensors:
            try:
                name = hf_tensor_name(arch, tensor.name)
            except KeyError:
                logger.warning("skipping GGUF tensor %r: no HF name for architecture %r",
                               tensor.name, arch_name)
                continue
            if name is None:
                continue
            weight = dequantize(tensor.data, tensor.tensor_type)  # numpy, logical shape
            if arch.permute_qk and ".self_attn.q_proj." in name:
                weight = unpermute_rows(weight, num_heads)
            elif arch.permute_qk and ".self_attn.k_proj." in name:
                weight = unpermute_rows(weight, num_kv_heads)
            if not (weight.flags.writeable and weight.flags.c_contiguous):
                weight = np.array(weight)  # copy out of the read-only memory map
            yield name, torch.from_numpy(weight)
