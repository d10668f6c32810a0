"""dense_linear: the CPU column-block split and packed weights (core's oneDNN provider, and
whichever pack_linear provider is best here) compute the same product as F.linear."""

import pytest
import torch
import torch.nn.functional as F

from octavo.layers.dense import (
    CPU_BLOCK,
    CPU_SPLIT_ABOVE,
    OneDnnPackedLinear,
    PackedLinear,
    dense_linear,
    pack_dense,
)
from octavo.layers.layer_ops import LAYER_OPS_ENV


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("out_features", [CPU_SPLIT_ABOVE, CPU_SPLIT_ABOVE + 1, CPU_SPLIT_ABOVE + CPU_BLOCK + 5])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_f_linear(rows, out_features, bias):
    g = torch.Generator().manual_seed(rows * out_features)
    x = torch.randn(rows, 96, generator=g)
    w = torch.randn(out_features, 96, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    out = dense_linear(x, w, b)
    assert out.shape == (rows, out_features)
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_leading_dims_are_kept():
    x = torch.randn(2, 3, 16)
    w = torch.randn(CPU_SPLIT_ABOVE + 100, 16)
    torch.testing.assert_close(dense_linear(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)


needs_packing = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                   reason="this torch build has no oneDNN")


@needs_packing
@pytest.mark.parametrize("provider", ["onednn", None])  # None: the best one installed
@pytest.mark.parametrize("rows", [0, 1, 16, 37, 300])
@pytest.mark.parametrize("shape", [(96, 64), (3072, 576), (CPU_SPLIT_ABOVE + 7, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_weight_matches_f_linear(monkeypatch, provider, rows, shape, bias):
    if provider is not None:
        monkeypatch.setenv(LAYER_OPS_ENV, provider)
    g = torch.Generator().manual_seed(rows + shape[0])
    x = torch.randn(rows, shape[1], generator=g)
    w = torch.randn(*shape, generator=g)
    b = torch.randn(shape[0], generator=g) if bias else None
    packed = pack_dense(w)
    assert isinstance(packed, PackedLinear) and packed.shape == w.shape
    if provider == "onednn":
        assert isinstance(packed, OneDnnPackedLinear) and packed.data.is_mkldnn
    torch.testing.assert_close(dense_linear(x, packed, b), F.linear(x, w, b),
                               atol=1e-4, rtol=1e-5)
    x3 = torch.randn(2, 3, shape[1], generator=g)[:, ::2]  # non-contiguous, leading dims
    torch.testing.assert_close(dense_linear(x3, packed, b), F.linear(x3, w, b),
                               atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available()
                         and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    reason="oneDNN has no bfloat16 path on this CPU")
@pytest.mark.parametrize("rows", [1, 16, 37])
@pytest.mark.parametrize("shape", [(96, 64), (1536, 576)])
def test_packed_bfloat16_weight_matches_f_linear(monkeypatch, rows, shape):
    """On CPUs with a bfloat16 path (AVX-512 BW/VL/DQ, AMX) bfloat16 weights are packed too and
    agree with the float32 product of the same bfloat16 values to bfloat16's precision."""
    monkeypatch.setenv(LAYER_OPS_ENV, "onednn")
    g = torch.Generator().manual_seed(rows + shape[0])
    x = torch.randn(rows, shape[1], generator=g).bfloat16()
    w = (torch.randn(*shape, generator=g) / shape[1] ** 0.5).bfloat16()
    b = torch.randn(shape[0], generator=g).bfloat16()
    packed = pack_dense(w)
    assert isinstance(packed, OneDnnPackedLinear) and packed.data.is_mkldnn
    out = dense_linear(x, packed, b)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.linear(x.float(), w.float(), b.float()),
                               atol=2e-2, rtol=2e-2)


@needs_packing
def test_what_is_not_packed(monkeypatch):
    w = torch.randn(8, 4)
    assert pack_dense(w.double()) is None  # float32, and bfloat16 where oneDNN has a path
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert pack_dense(w.bfloat16()) is None
    assert pack_dense(torch.randn(8)) is None
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")
    assert pack_dense(w) is None


@needs_packing
def test_loaded_layers_keep_only_the_packed_weight(tmp_path, monkeypatch):
    """After loading, a model's CPU linear layers hold opaque packed weights and give the
    same logits as with packing off."""
    from octavo import LLM, SamplingParams
    from octavo.testing.tiny_models import save_tiny_model

    save_tiny_model(tmp_path, "llama")
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=1, ignore_eos=True)
    prompts = [[5, 9, 17, 3], [40, 2, 7]]
    llm = LLM(str(tmp_path), dtype="float32", num_gpu_blocks_override=32)
    model = llm.engine.core.runner.model
    linear = model.model.layers[0].mlp.down_proj
    assert isinstance(linear.packed_weight, PackedLinear)
    assert linear.weight.data_ptr() == linear.packed_weight.data.data_ptr()  # one copy
    packed = llm.generate(prompts, params)
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")
    plain_llm = LLM(str(tmp_path), dtype="float32", num_gpu_blocks_override=32)
    plain_layer = plain_llm.engine.core.runner.model.model.layers[0].mlp.down_proj
    assert plain_layer.packed_weight is None
    plain = plain_llm.generate(prompts, params)
    for a, b in zip(packed, plain):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert next(iter(x.values())).logprob == pytest.approx(
                next(iter(y.values())).logprob, abs=1e-4)
