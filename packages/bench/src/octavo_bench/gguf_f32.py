"""A float32 copy of a GGUF, so llama.cpp runs the same float32 weights Octavo and HF run.

The demo GGUF is Q4_1; both Octavo and HF dequantize it to float32 on load, while llama.cpp
would compute on the 4-bit blocks. The copy keeps every metadata key (tokenizer, chat
template, hyper-parameters) and stores every tensor dequantized to F32.
"""

from __future__ import annotations

import os
from pathlib import Path


def float32_gguf_path(src: Path) -> Path:
    """Where the float32 copy of ``src`` is kept: the GGUF conversion cache."""
    from octavo.model_loader.gguf_cache import cache_root

    return cache_root() / "f32-gguf" / f"{src.stem}.F32.gguf"


def write_float32_gguf(src: str | Path, dst: str | Path | None = None) -> Path:
    """Write (once) a copy of GGUF ``src`` with every tensor dequantized to F32."""
    import gguf
    import numpy as np

    src = Path(src)
    dst = Path(dst) if dst is not None else float32_gguf_path(src)
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f"{dst.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer adds these itself
        kind = field.types[0]
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(dst)
    return dst
