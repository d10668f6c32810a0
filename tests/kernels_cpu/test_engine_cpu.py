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
