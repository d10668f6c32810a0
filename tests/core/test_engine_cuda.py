"""The engine end to end on CUDA with the best attention backend, against HF on the same GPU."""

from __future__ import annotations

import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.testing.model_suite import hf_greedy
from octavo.testing.tiny_models import save_tiny_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2"])
def tiny_cuda(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    # head size 64: every CUDA backend supports it (the CPU tests' tiny models use 16)
    hf_model = save_tiny_model(folder, request.param, hidden_size=256).to("cuda")
    return folder, hf_model


@pytest.mark.parametrize("backend", [None, "torch", "triton", "cuda"])
def test_greedy_on_cuda_matches_hf(tiny_cuda, backend):
    folder, hf_model = tiny_cuda
    try:
        llm = LLM(str(folder), device="cuda", dtype="float32", block_size=16,
                  num_gpu_blocks_override=128, attention_backend=backend)
    except ValueError as exc:  # backend not installed or not for this shape
        pytest.skip(f"backend {backend}: {exc}")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (5, 17, 40, 3)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outputs = llm.generate(prompts, params)
    got = [o.outputs[0].token_ids for o in outputs]
    want = [hf_greedy(hf_model, p, 12) for p in prompts]
    assert got == want
    kv = llm.engine.core.scheduler.kv_cache
    assert kv.num_free_blocks == kv.num_blocks
