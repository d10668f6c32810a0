"""The engine's scheduling situations on a quantized model: a mixed-length batch, a shared
prefix from the prefix cache, and preemption by a tiny cache give HF's greedy tokens on the
dequantized float twin (reference kernel), and the int4 kernel gives the same tokens batched
as one request at a time."""

from __future__ import annotations

import random

import octavo_quant_test_packer as packer  # registered by tests/quant/conftest.py
import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.testing.model_suite import hf_greedy
from octavo_quant.kernels import KERNEL_ENV

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
RECIPE = packer.Recipe(sym=False, desc_act=True)


@pytest.fixture(scope="module")
def twins(quantized_checkpoint):
    from transformers import AutoModelForCausalLM

    folder, float_folder, _ = quantized_checkpoint(RECIPE)
    hf_model = AutoModelForCausalLM.from_pretrained(float_folder, dtype=torch.float32).eval()
    return folder, hf_model


def prompts_of(lengths, seed, prefix=()):
    rng = random.Random(seed)
    return [list(prefix) + [rng.randrange(3, 128) for _ in range(n)] for n in lengths]


def tokens(outputs):
    return [out.outputs[0].token_ids for out in outputs]


def make_llm(folder, **kwargs):
    return LLM(str(folder), device="cpu", block_size=4, **{"num_gpu_blocks_override": 256,
                                                           **kwargs})


def test_mixed_batch_prefix_cache_and_preemption_match_hf(twins, monkeypatch):
    folder, hf_model = twins
    monkeypatch.setenv(KERNEL_ENV, "reference")
    mixed = prompts_of([3, 11, 6, 9], seed=1)
    shared = prompts_of([3, 5], seed=2, prefix=prompts_of([12], seed=3)[0])
    llm = make_llm(folder)
    assert tokens(llm.generate(mixed, GREEDY)) == [hf_greedy(hf_model, p, 8) for p in mixed]
    first = llm.generate(shared[:1], GREEDY)
    rest = llm.generate(shared[1:], GREEDY)
    assert rest[0].metrics.num_cached_tokens == 12
    assert tokens(first + rest) == [hf_greedy(hf_model, p, 8) for p in shared]
    small = make_llm(folder, num_gpu_blocks_override=10, enable_prefix_caching=False)
    outputs = small.generate(mixed, GREEDY)
    assert sum(out.metrics.num_preemptions for out in outputs) > 0
    assert tokens(outputs) == [hf_greedy(hf_model, p, 8) for p in mixed]


def test_int4_kernel_gives_the_same_tokens_batched_and_alone(twins, monkeypatch):
    folder, _ = twins
    monkeypatch.setenv(KERNEL_ENV, "auto")
    llm = make_llm(folder)
    prompts = prompts_of([4, 10, 7], seed=4)
    batched = tokens(llm.generate(prompts, GREEDY))
    assert batched == [tokens(llm.generate([p], GREEDY))[0] for p in prompts]
