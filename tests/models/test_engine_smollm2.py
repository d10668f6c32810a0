"""The engine on the real SmolLM2-135M-Instruct (the offline demo GGUF) against HF transformers.

One model load serves every scenario: engines with different cache and scheduler settings are
assembled around it. HF's reference is ``generate`` on one prompt at a time (no padding).
"""

from __future__ import annotations

import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.config import CacheSettings, ModelSettings, SchedulerSettings
from octavo.engine.builder import build_engine_core
from octavo.engine.llm_engine import LLMEngine
from octavo.model_loader.loader import load_model, resolve_model_source

pytestmark = pytest.mark.slow

STEPS = 12
SYSTEM = "You are a concise assistant who answers questions about geography and history."
QUESTIONS = ["What is the capital of France?", "Name a river in Egypt.",
             "Who built the pyramids, and when did they do it? Answer in one sentence."]


@pytest.fixture(scope="module")
def demo():
    return load_model(ModelSettings(model=None, device="cpu"))


@pytest.fixture(scope="module")
def prompts(demo):
    tok = demo.tokenizer
    chats = [tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": q}],
                                     add_generation_prompt=True, tokenize=True) for q in QUESTIONS]
    return [list(c["input_ids"] if isinstance(c, dict) or hasattr(c, "input_ids") else c)
            for c in chats] + [tok("The capital of France is").input_ids]


@pytest.fixture(scope="module")
def reference(prompts):
    """HF greedy tokens and per-step logprobs of the chosen tokens."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(None)
    hf = AutoModelForCausalLM.from_pretrained(source.folder, gguf_file=source.gguf_file,
                                              dtype=torch.float32).eval()
    results = []
    with torch.inference_mode():
        for prompt in prompts:
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=STEPS, min_new_tokens=STEPS,
                              do_sample=False, output_logits=True, return_dict_in_generate=True)
            tokens = out.sequences[0, len(prompt):].tolist()
            # raw logits: ``scores`` would carry min_new_tokens' EOS mask
            logprobs = [torch.log_softmax(s[0].float(), -1)[t].item()
                        for s, t in zip(out.logits, tokens)]
            results.append((tokens, logprobs))
    return results


def engine(demo, **options) -> LLM:
    cache = CacheSettings(**{k: v for k, v in options.items() if k in CacheSettings.model_fields})
    sched = SchedulerSettings(**{k: v for k, v in options.items()
                                 if k in SchedulerSettings.model_fields})
    core = build_engine_core(demo, cache, sched, demo.max_model_len)
    return LLM(engine=LLMEngine(core, demo.tokenizer, vocab_size=demo.hf_config.vocab_size,
                                max_model_len=demo.max_model_len,
                                eos_token_ids=demo.eos_token_ids))


PARAMS = SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True, logprobs=1)
SCENARIOS = {
    "mixed-batch": {},
    "chunked-prefill": {"max_num_batched_tokens": 16},
    "no-prefix-caching": {"enable_prefix_caching": False},
    "preemption": {"num_gpu_blocks_override": 9, "block_size": 16},
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_greedy_tokens_and_logprobs_match_hf(demo, prompts, reference, scenario):
    llm = engine(demo, **SCENARIOS[scenario])
    outputs = llm.generate(prompts, PARAMS)
    for out, (tokens, logprobs) in zip(outputs, reference):
        completion = out.outputs[0]
        assert completion.token_ids == tokens
        got = [completion.logprobs[i][t].logprob for i, t in enumerate(tokens)]
        assert got == pytest.approx(logprobs, abs=2e-3)
    if scenario == "preemption":
        assert sum(o.metrics.num_preemptions for o in outputs) > 0
    kv = llm.engine.core.scheduler.kv_cache
    assert kv.num_free_blocks == kv.num_blocks


def test_shared_system_prompt_hits_the_prefix_cache(demo, prompts, reference):
    llm = engine(demo)
    llm.generate(prompts[:1], PARAMS)
    outputs = llm.generate(prompts[1:3], PARAMS)
    assert all(o.metrics.num_cached_tokens >= 16 for o in outputs)
    assert [o.outputs[0].token_ids for o in outputs] == [r[0] for r in reference[1:3]]


def test_llm_without_a_model_is_the_demo_and_chats():
    llm = LLM(device="cpu")
    (out,) = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                      SamplingParams(temperature=0, max_tokens=16))
    assert "Paris" in out.outputs[0].text
