"""End to end: greedy tokens and logprobs from ``LLM`` with the CPU backend equal those with
the torch backend, on a tiny Llama (RoPE, GQA) and a tiny MPT (ALiBi), with chunked prefill
and decodes mixed in one step."""

from __future__ import annotations

import random

import pytest

from octavo import LLM, SamplingParams
from octavo_cpu.backend import CpuAttentionBackend

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)


def generate(folder, backend: str, prompts):
    # A small token budget chunks the long prompts, so steps mix prefill chunks and decodes.
    llm = LLM(str(folder), device="cpu", dtype="float32", attention_backend=backend,
              block_size=16, num_gpu_blocks_override=64, max_num_batched_tokens=48)
    outputs = [out.outputs[0] for out in llm.generate(prompts, GREEDY)]
    return ([o.token_ids for o in outputs],
            [[next(iter(step.values())).logprob for step in o.logprobs] for o in outputs])


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_mpt"])
def test_cpu_backend_matches_torch(model, request, monkeypatch):
    folder = request.getfixturevalue(model)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 128) for _ in range(n)] for n in (3, 19, 40, 100)]
    expected_tokens, expected_logprobs = generate(folder, "torch", prompts)

    calls = []
    original = CpuAttentionBackend.forward
    monkeypatch.setattr(CpuAttentionBackend, "forward",
                        lambda self, *a: calls.append(1) or original(self, *a))
    tokens, logprobs = generate(folder, "cpu", prompts)
    assert calls
    assert tokens == expected_tokens
    for got, want in zip(logprobs, expected_logprobs):
        assert got == pytest.approx(want, abs=1e-4)


def test_cpu_layer_ops_match_torch(tiny_llama, monkeypatch):
    """The model with octavo_cpu's norm, rotary, SiLU and KV write against the torch code."""
    import weakref

    from octavo.layers import layer_ops as core_layer_ops
    from octavo.layers.layer_ops import LAYER_OPS_ENV
    from octavo_cpu import layer_ops

    rng = random.Random(1)
    prompts = [[rng.randrange(3, 128) for _ in range(n)] for n in (1, 7, 33, 90)]
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")
    expected_tokens, expected_logprobs = generate(tiny_llama, "cpu", prompts)

    monkeypatch.delenv(LAYER_OPS_ENV)
    monkeypatch.setattr(core_layer_ops, "_chosen", weakref.WeakKeyDictionary())  # choose anew
    called = set()
    for op in ("rms_norm", "fused_add_rms_norm", "rotary", "silu_and_mul"):
        original = getattr(layer_ops.CpuLayerOps, op)
        monkeypatch.setattr(layer_ops.CpuLayerOps, op, staticmethod(
            lambda *a, _op=op, _f=original: called.add(_op) or _f(*a)))
    tokens, logprobs = generate(tiny_llama, "cpu", prompts)
    assert called == {"rms_norm", "fused_add_rms_norm", "rotary", "silu_and_mul"}
    assert tokens == expected_tokens
    for got, want in zip(logprobs, expected_logprobs):
        assert got == pytest.approx(want, abs=1e-4)
