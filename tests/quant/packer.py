"""Test-side writers of GPTQ and AWQ checkpoints, shaped as gptqmodel / auto-gptq and AutoAWQ
write them (the writer's side, independent of octavo_quant's readers).

- Quantization is round-to-nearest per group with the writers' quantizers: GPTQ's (the range
  always includes 0, so an all-positive group gets zero 0; symmetric: zero ``2**(bits-1)``)
  and AWQ's (``zeros = -round(min / scale)``). With ``desc_act`` the groups follow a random
  activation order: ``g_idx[perm[j]] = j // group_size``, as GPTQ assigns them.
- GPTQ words: ``qweight [in / pack, out]`` packed along the input features, ``qzeros
  [G, out / pack]`` along the output features, lowest bits first, summed in int64 and masked
  to 32 bits (gptqmodel's ``pack_block``). v1 (``checkpoint_format: "gptq"``) subtracts
  ``0x11111111`` / ``0x01010101`` from each packed zero word, as gptqmodel's
  ``convert_gptq_v2_to_v1_format`` does: a zero of 0 borrows from the field above.
- AWQ words: ``qweight [in, out / 8]`` and ``qzeros [G, out / 8]`` packed along the output
  features; nibble ``k`` of word ``c`` holds output ``c * 8 + (0, 2, 4, 6, 1, 3, 5, 7)[k]``
  (AutoAWQ's ``WQLinear_GEMM.from_linear``).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

MASK = (1 << 32) - 1
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Recipe:
    """How to quantize: ``method`` "gptq" or "awq", and the format's options."""

    method: str = "gptq"
    bits: int = 4
    group_size: int = 32
    sym: bool = True
    desc_act: bool = False
    checkpoint_format: str = "gptq"  # or "gptq_v2"
    write_g_idx: bool = True
    config_file: str = "config.json"  # or quantize_config.json / quant_config.json
    skip: tuple[str, ...] = field(default=())  # AWQ modules_to_not_convert


@dataclass
class Quantized:
    """One layer's codes ``[out, in]``, scales / zeros ``[G, out]`` and ``g_idx [in]``."""

    codes: torch.Tensor
    scales: torch.Tensor  # float16
    zeros: torch.Tensor
    g_idx: torch.Tensor

    def fake_quantized(self) -> torch.Tensor:
        """The float weight the codes stand for, ``[out, in]`` (float32)."""
        g = self.g_idx.long()
        return (self.scales.float()[g].t() * (self.codes - self.zeros[g].t()).float())


def group_index(in_features: int, group_size: int, desc_act: bool, seed: int) -> torch.Tensor:
    size = group_size if group_size != -1 else in_features
    order = torch.arange(in_features)
    if desc_act:
        order = torch.randperm(in_features, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[order] = (torch.arange(in_features) // size).to(torch.int32)
    return g_idx


def quantize(weight: torch.Tensor, recipe: Recipe, seed: int = 0) -> Quantized:
    """Round-to-nearest group quantization of ``weight [out, in]`` with the writer's rules."""
    maxq = 2 ** recipe.bits - 1
    g_idx = group_index(weight.shape[1], recipe.group_size, recipe.desc_act, seed)
    groups = int(g_idx.max()) + 1
    scales = torch.empty(groups, weight.shape[0], dtype=torch.float16)
    zeros = torch.empty(groups, weight.shape[0], dtype=torch.int32)
    for g in range(groups):
        cols = weight[:, g_idx == g]
        scales[g], zeros[g] = _group_scale_zero(cols, maxq, recipe)
    s = scales.float()[g_idx.long()].t()
    z = zeros[g_idx.long()].t()
    codes = torch.clamp(torch.round(weight / s + z), 0, maxq).to(torch.int32)
    return Quantized(codes, scales, zeros, g_idx)


def _group_scale_zero(cols: torch.Tensor, maxq: int, recipe: Recipe):
    low, high = cols.min(dim=1).values, cols.max(dim=1).values
    if recipe.method == "awq":
        scale = ((high - low).clamp(min=1e-5) / maxq).half()
        zero = torch.clamp(-torch.round(low / scale.float()), 0, maxq)
        return scale, zero.to(torch.int32)
    low, high = low.clamp(max=0), high.clamp(min=0)  # GPTQ's range includes 0
    if recipe.sym:
        high = torch.maximum(low.abs(), high)
        low = -high
    scale = ((high - low).clamp(min=1e-8) / maxq).half()
    if recipe.sym:
        zero = torch.full_like(low, (maxq + 1) // 2)
    else:
        zero = torch.round(-low / scale.float())
    return scale, zero.to(torch.int32)


def _pack(values: torch.Tensor, bits: int, dim: int, order=None) -> torch.Tensor:
    """Pack ``values`` along ``dim`` into int32 words, field ``k`` of a word at bits ``k*bits``."""
    pack = 32 // bits
    v = values.to(torch.int64).movedim(dim, -1)
    v = v.reshape(*v.shape[:-1], -1, pack)
    if order is not None:
        v = v[..., list(order)]
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    words = ((v << shifts).sum(-1) & MASK)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)
    return words.movedim(-1, dim)


def gptq_tensors(q: Quantized, recipe: Recipe) -> dict[str, torch.Tensor]:
    bits = recipe.bits
    qzeros = _pack(q.zeros, bits, dim=1)
    if recipe.checkpoint_format == "gptq":  # v1: subtract one per field from the whole word
        offset = sum(1 << s for s in range(0, 32, bits))
        wide = (qzeros.to(torch.int64) - offset) & MASK
        qzeros = torch.where(wide >= 2 ** 31, wide - 2 ** 32, wide).to(torch.int32)
    out = {"qweight": _pack(q.codes.t(), bits, dim=0), "qzeros": qzeros, "scales": q.scales}
    if recipe.write_g_idx:
        out["g_idx"] = q.g_idx
    return out


def awq_tensors(q: Quantized, recipe: Recipe) -> dict[str, torch.Tensor]:
    return {"qweight": _pack(q.codes.t(), 4, dim=1, order=AWQ_ORDER),
            "qzeros": _pack(q.zeros, 4, dim=1, order=AWQ_ORDER), "scales": q.scales}


def quant_config(recipe: Recipe) -> dict:
    if recipe.method == "awq":
        if recipe.config_file == "quant_config.json":  # old AutoAWQ spelling
            return {"zero_point": True, "q_group_size": recipe.group_size, "w_bit": recipe.bits,
                    "version": "GEMM"}
        return {"quant_method": "awq", "bits": recipe.bits, "group_size": recipe.group_size,
                "zero_point": True, "version": "gemm",
                "modules_to_not_convert": list(recipe.skip) or None}
    raw = {"bits": recipe.bits, "group_size": recipe.group_size, "desc_act": recipe.desc_act,
           "sym": recipe.sym, "damp_percent": 0.01, "true_sequential": True,
           "static_groups": False}
    if recipe.config_file == "quantize_config.json":  # gptqmodel's side file
        return {**raw, "format": recipe.checkpoint_format, "quant_method": "gptq"}
    return {**raw, "quant_method": "gptq", "checkpoint_format": recipe.checkpoint_format}


def _quantized_layer(name: str, recipe: Recipe) -> bool:
    return any(name.endswith(f"{linear}.weight") for linear in LINEARS) and not any(
        s in name for s in recipe.skip)


def _input_seed(base: str) -> int:
    """One activation order per layer input: q/k/v share theirs, as do gate/up (GPTQ derives
    the order from the input's Hessian, which those projections share)."""
    for shard, shared in (("q_proj", "qkv"), ("k_proj", "qkv"), ("v_proj", "qkv"),
                          ("gate_proj", "gate_up"), ("up_proj", "gate_up")):
        base = base.replace(shard, shared)
    return zlib.crc32(base.encode())


def write_checkpoint(hf_model, folder: Path, recipe: Recipe, float_folder: Path | None = None
                     ) -> dict[str, torch.Tensor]:
    """Write ``hf_model`` quantized by ``recipe`` to ``folder`` (tokenizer files are copied by
    the caller); optionally the dequantized float32 model to ``float_folder``. Returns the
    fake-quantized float weights by HF tensor name."""
    tensors, dense, fake = {}, {}, {}
    for name, weight in hf_model.state_dict().items():
        weight = weight.detach().to(torch.float16)
        if not _quantized_layer(name, recipe):
            tensors[name] = weight
            dense[name] = weight.float()
            continue
        base = name[: -len(".weight")]
        q = quantize(weight.float(), recipe, seed=_input_seed(base))
        written = (awq_tensors if recipe.method == "awq" else gptq_tensors)(q, recipe)
        tensors.update({f"{base}.{key}": value for key, value in written.items()})
        fake[name] = dense[name] = q.fake_quantized()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    config = hf_model.config.to_dict()
    config["torch_dtype"] = "float16"
    if recipe.config_file == "config.json":
        config["quantization_config"] = quant_config(recipe)
    else:
        (folder / recipe.config_file).write_text(json.dumps(quant_config(recipe)))
    (folder / "config.json").write_text(json.dumps(config))
    if float_folder is not None:
        float_folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in dense.items()},
                  float_folder / "model.safetensors", metadata={"format": "pt"})
        config.pop("quantization_config", None)
        config["torch_dtype"] = "float32"
        (float_folder / "config.json").write_text(json.dumps(config))
    return fake
