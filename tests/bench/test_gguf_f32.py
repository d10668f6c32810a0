"""The float32 GGUF copy llama.cpp runs in ``--compare llama.cpp``."""

from __future__ import annotations

import gguf
import numpy as np

from octavo_bench.gguf_f32 import write_float32_gguf


def test_float32_copy_keeps_metadata_and_dequantizes(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 64)).astype(np.float32)
    norm = rng.standard_normal(64).astype(np.float32)
    src = tmp_path / "tiny.Q8_0.gguf"
    writer = gguf.GGUFWriter(src, "llama")
    writer.add_context_length(256)
    writer.add_token_list(["<s>", "</s>", "a"])
    writer.add_chat_template("{{ messages }}")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    quantized = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_q.weight", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", norm)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    dst = write_float32_gguf(src, tmp_path / "tiny.F32.gguf")
    copy, original = gguf.GGUFReader(dst), gguf.GGUFReader(src)
    for key in ("llama.context_length", "tokenizer.ggml.tokens", "tokenizer.chat_template"):
        assert copy.fields[key].contents() == original.fields[key].contents()
    assert copy.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    tensors = {t.name: t for t in copy.tensors}
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.F32
    expected = gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(np.asarray(q.data).reshape(4, 64), expected)
    assert np.abs(expected - weight).max() < 0.05  # Q8_0 is close to the original
    np.testing.assert_array_equal(np.asarray(tensors["output_norm.weight"].data), norm)
    # written once: a second call reuses the file
    mtime = dst.stat().st_mtime_ns
    assert write_float32_gguf(src, dst) == dst and dst.stat().st_mtime_ns == mtime
