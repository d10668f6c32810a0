"""Octavo on a quantized checkpoint against HF transformers on its dequantized float twin:
greedy tokens equal, logprobs close (reference kernel); the fast kernel's logits close to
the reference's."""

from __future__ import annotations

import octavo_quant_test_packer as packer  # registered by tests/quant/conftest.py
import pytest
import torch

from octavo import LLM, SamplingParams
from octavo_quant import kernels as kernels_module
from octavo_quant.kernels import KERNEL_ENV

Recipe = packer.Recipe
PROMPTS = [[1, 4, 8, 10, 5], [1, 12, 6], [1, 7, 7, 11, 14, 15, 9]]  # token ids
NEW_TOKENS = 8


def hf_greedy(float_folder, prompt_ids: list[int]) -> tuple[list[int], list[float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(float_folder, dtype=torch.float32).eval()
    ids, logprobs = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            token = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            ids.append(token)
    return ids[len(prompt_ids):], logprobs


def octavo_greedy(folder) -> list:
    llm = LLM(str(folder), device="cpu")
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=0)
    return llm.generate(PROMPTS, params)


@pytest.mark.parametrize("recipe", [
    Recipe(sym=False, desc_act=True),
    Recipe(bits=8, group_size=64, checkpoint_format="gptq_v2"),
    Recipe(method="awq"),
], ids=["gptq-4bit-desc-act-v1", "gptq-8bit-v2", "awq"])
def test_greedy_tokens_equal_hf_on_the_dequantized_model(recipe, quantized_checkpoint,
                                                         monkeypatch):
    folder, float_folder, _ = quantized_checkpoint(recipe)
    monkeypatch.setenv(KERNEL_ENV, "reference")
    for out in octavo_greedy(folder):
        tokens, logprobs = hf_greedy(float_folder, out.prompt_token_ids)
        got = out.outputs[0]
        assert got.token_ids == tokens
        ours = [entry[token].logprob for entry, token in zip(got.logprobs, got.token_ids)]
        torch.testing.assert_close(torch.tensor(ours), torch.tensor(logprobs),
                                   rtol=0, atol=1e-4)


def test_qwen2_greedy_tokens_equal_hf(quantized_checkpoint, monkeypatch):
    folder, float_folder, _ = quantized_checkpoint(Recipe(sym=False, desc_act=True),
                                                   arch="qwen2")
    monkeypatch.setenv(KERNEL_ENV, "reference")
    out = octavo_greedy(folder)[0]
    assert out.outputs[0].token_ids == hf_greedy(float_folder, out.prompt_token_ids)[0]


@pytest.mark.parametrize(("kernel", "tolerance"), [
    ("PackedInt4Kernel", 1e-4),  # float32 throughout: the reference's rounding
    ("Int4CpuKernel", 2e-2),  # bfloat16 activations inside
])
def test_fast_kernel_logprobs_close_to_the_reference(quantized_checkpoint, monkeypatch, kernel,
                                                     tolerance):
    folder, _, _ = quantized_checkpoint(Recipe(sym=False, desc_act=True))
    monkeypatch.setenv(KERNEL_ENV, "reference")
    reference = octavo_greedy(folder)
    monkeypatch.setenv(KERNEL_ENV, "auto")
    if kernel == "Int4CpuKernel":  # the float32 C++ kernel would be chosen where it builds
        monkeypatch.setattr(kernels_module, "find_layer_op", lambda op, x: None)
    llm = LLM(str(folder), device="cpu")
    model = llm.engine.core.runner.model  # the fast path must really be in use
    kernels = {type(m.quant_kernel).__name__ for m in model.modules() if hasattr(m, "quant_kernel")}
    if kernel == "PackedInt4Kernel" and kernels == {"Int4CpuKernel"}:
        pytest.skip("no pack_int4_linear layer op here (octavo-kernels-cpu without a compiler)")
    assert kernels == {kernel}
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True,
                            logprobs=0)
    for ref, out in zip(reference, llm.generate(PROMPTS, params)):
        # the first logprob within the kernel's rounding, the first tokens equal on this tiny
        # model (kernel-level closeness: test_kernels.py)
        assert out.outputs[0].token_ids[:3] == ref.outputs[0].token_ids[:3]
        first = out.outputs[0].token_ids[0]
        assert abs(out.outputs[0].logprobs[0][first].logprob
                   - ref.outputs[0].logprobs[0][first].logprob) < tolerance
