"""A GGUF model saved once as an HF float32 safetensors folder, for peers that need one (vLLM).

transformers loads the GGUF (``gguf_file=``) de-quantized to float32, the same weights Octavo
and HF run. Its ``save_pretrained`` refuses a model loaded from a GGUF until the quantizer is
dropped (``hf_quantizer = None``, no ``quantization_config``); the saved folder then gives the
same HF logits as the GGUF. The tokenizer (with the GGUF's chat template) is saved beside it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def float32_hf_path(src: Path) -> Path:
    """Where the HF float32 copy of GGUF ``src`` is kept, in Octavo's cache."""
    from octavo.model_loader.gguf_cache import cache_root

    return cache_root() / "f32-hf" / f"{src.stem}.F32"


def write_float32_hf_folder(src: str | Path, dst: str | Path | None = None) -> Path:
    """Write (once) GGUF ``src`` as an HF folder: config, float32 safetensors, tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from octavo.model_loader.loader import load_tokenizer
    from octavo.model_loader.source import ModelSource

    src = Path(src)
    dst = Path(dst) if dst is not None else float32_hf_path(src)
    done = dst / "config.json"
    if done.is_file() and done.stat().st_mtime >= src.stat().st_mtime:
        return dst
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                 dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer = load_tokenizer(ModelSource("gguf", src, gguf_file=src.name, name=src.stem))
    partial = dst.with_name(f"{dst.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(dst, ignore_errors=True)
    partial.rename(dst)
    return dst
