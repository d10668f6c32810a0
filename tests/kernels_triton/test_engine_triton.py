"""End to end: greedy tokens from ``LLM`` with the Triton backend (and Triton layer ops)
equal those with the torch backend, on a tiny Llama (RoPE, GQA, RMSNorm) and a tiny MPT
(ALiBi). On the CPU this runs Triton's interpreter: few, short requests."""

from __future__ import annotations

import random

import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.layers.layer_ops import LAYER_OPS_ENV
from octavo.plugins import reset_plugin_manager
from octavo_triton.backend import TritonAttentionBackend
from octavo_triton.launch import interpreted
from octavo_triton.layer_ops import TritonLayerOps

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)

if not ON_CUDA and not interpreted():
    pytest.skip("no CUDA device and the Triton interpreter is off", allow_module_level=True)


def greedy_tokens(folder, backend: str, prompts) -> list[list[int]]:
    # A small token budget chunks the longest prompt, so steps mix prefill chunks and decodes.
    llm = LLM(str(folder), device=DEVICE, dtype="float32", attention_backend=backend,
              block_size=16, num_gpu_blocks_override=64, max_num_batched_tokens=24)
    return [out.outputs[0].token_ids for out in llm.generate(prompts, GREEDY)]


def random_prompts(lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 128) for _ in range(n)] for n in lengths]


def count_calls(monkeypatch, owner, name, counts, wrap=staticmethod):
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrap(counted))


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_mpt"])
def test_triton_greedy_tokens_equal_torch(model, request, monkeypatch):
    folder = request.getfixturevalue(model)
    prompts = random_prompts([3, 19, 40])
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")
    expected = greedy_tokens(folder, "torch", prompts)

    counts: dict[str, int] = {}
    count_calls(monkeypatch, TritonAttentionBackend, "forward", counts, wrap=lambda f: f)
    for op in TritonLayerOps.implemented_ops():
        count_calls(monkeypatch, TritonLayerOps, op, counts)
    reset_plugin_manager()  # layer ops are chosen anew, with the counters in place
    request.addfinalizer(reset_plugin_manager)
    monkeypatch.setenv(LAYER_OPS_ENV, "triton")  # the Triton norm/rotary too (CPU: opt-in)
    assert greedy_tokens(folder, "triton", prompts) == expected
    assert counts.get("forward", 0) > 0
    # MPT uses LayerNorm and ALiBi (no Triton op for those); Llama uses all three.
    assert set(counts) == ({"forward"} if model == "tiny_mpt"
                           else {"forward", "rms_norm", "fused_add_rms_norm", "rotary"})
