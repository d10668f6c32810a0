"""The HF float32 folder of a GGUF that vLLM runs in ``--compare vllm``."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from octavo_bench.hf_f32 import write_float32_hf_folder


def test_gguf_saved_as_float32_safetensors_with_the_same_logits(tiny_llama_gguf, tmp_path):
    dst = write_float32_hf_folder(tiny_llama_gguf, tmp_path / "hf")
    config = json.loads((dst / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    tensors = load_file(dst / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert AutoTokenizer.from_pretrained(dst).vocab_size == 259
    ids = torch.tensor([[5, 17, 200, 33, 9]])
    saved = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_gguf.parent,
                                                    gguf_file=tiny_llama_gguf.name,
                                                    dtype=torch.float32)
    with torch.inference_mode():
        torch.testing.assert_close(saved(ids).logits, original(ids).logits, rtol=0, atol=0)
    # written once: a second call reuses the folder
    mtime = (dst / "model.safetensors").stat().st_mtime_ns
    assert write_float32_hf_folder(tiny_llama_gguf, dst) == dst
    assert (dst / "model.safetensors").stat().st_mtime_ns == mtime
