"""The whole engine against HF transformers on tiny random Llama / Mistral / Qwen2 models.

Greedy tokens must be equal token for token in every scheduling situation: mixed-length
batches, requests arriving mid-decode, chunked prefill, prefix caching on and off, preemption,
and n > 1 with copy-on-write.
"""

from __future__ import annotations

import random

import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.testing.model_suite import hf_greedy, hf_logits
from octavo.testing.tiny_models import save_tiny_model

ARCHS = ["llama", "llama3-tied", "mistral", "qwen2"]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return folder, save_tiny_model(folder, request.param)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    return folder, save_tiny_model(folder, "llama")


def make_llm(folder, **kwargs) -> LLM:
    opts = dict(device="cpu", block_size=4, num_gpu_blocks_override=256)
    opts.update(kwargs)
    return LLM(str(folder), **opts)


def random_prompts(lengths, seed=0, vocab=128):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def token_ids(outputs):
    return [out.outputs[0].token_ids for out in outputs]


def expected(hf_model, prompts, steps=GREEDY.max_tokens):
    return [hf_greedy(hf_model, p, steps) for p in prompts]


def assert_no_blocks_held(llm: LLM):
    kv = llm.engine.core.scheduler.kv_cache
    assert kv.num_free_blocks == kv.num_blocks
    assert not llm.engine.has_unfinished_requests()


def test_mixed_length_batch_matches_hf(tiny):
    folder, hf_model = tiny
    prompts = random_prompts([3, 9, 17, 30])
    llm = make_llm(folder)
    assert token_ids(llm.generate(prompts, GREEDY)) == expected(hf_model, prompts)
    assert_no_blocks_held(llm)


def test_requests_arriving_while_others_decode(llama):
    folder, hf_model = llama
    prompts = random_prompts([5, 11, 7, 20], seed=1)
    engine = make_llm(folder).engine
    results = {}
    for i in range(2):
        engine.add_request(str(i), prompts[i], GREEDY)
    for step in range(40):
        if step == 3:
            engine.add_request("2", prompts[2], GREEDY)
        if step == 6:
            engine.add_request("3", prompts[3], GREEDY)
        for out in engine.step():
            if out.finished:
                results[out.request_id] = out.outputs[0].token_ids
    assert [results[str(i)] for i in range(4)] == expected(hf_model, prompts)


def test_chunked_prefill_under_a_small_budget(tiny):
    folder, hf_model = tiny
    prompts = random_prompts([23, 6, 14], seed=2)
    llm = make_llm(folder, max_num_batched_tokens=8)
    assert token_ids(llm.generate(prompts, GREEDY)) == expected(hf_model, prompts)


@pytest.mark.parametrize("caching", [True, False])
def test_shared_prefix_with_prefix_caching_on_and_off(llama, caching):
    folder, hf_model = llama
    prefix = random_prompts([21], seed=3)[0]
    prompts = [prefix + tail for tail in random_prompts([2, 5, 9], seed=4)]
    llm = make_llm(folder, enable_prefix_caching=caching)
    first = llm.generate(prompts[:1], GREEDY)
    rest = llm.generate(prompts[1:], GREEDY)
    assert token_ids(first + rest) == expected(hf_model, prompts)
    cached = [out.metrics.num_cached_tokens for out in rest]
    assert all(n == 20 for n in cached) if caching else all(n == 0 for n in cached)
    assert_no_blocks_held(llm)


def test_preemption_by_a_tiny_cache(tiny):
    folder, hf_model = tiny
    prompts = random_prompts([9, 12, 7, 10], seed=5)
    llm = make_llm(folder, num_gpu_blocks_override=12, enable_prefix_caching=False)
    outputs = llm.generate(prompts, GREEDY)
    assert sum(out.metrics.num_preemptions for out in outputs) > 0
    assert token_ids(outputs) == expected(hf_model, prompts)
    assert_no_blocks_held(llm)


def test_n_samples_share_the_prompt_and_equal_separate_seeded_runs(llama):
    folder, _ = llama
    prompt = random_prompts([10], seed=6)[0]
    llm = make_llm(folder)
    copies = []
    copy_blocks = llm.engine.core.runner.copy_blocks
    llm.engine.core.runner.copy_blocks = lambda c: (copies.extend(c), copy_blocks(c))
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=8, ignore_eos=True)
    (out,) = llm.generate([prompt], params)
    assert len(out.outputs) == 3 and len(copies) == 2  # copy-on-write of the shared block
    for i, sample in enumerate(out.outputs):
        alone = llm.generate([prompt], SamplingParams(temperature=1.0, seed=11 + i, max_tokens=8,
                                                      ignore_eos=True))
        assert sample.token_ids == alone[0].outputs[0].token_ids
    assert len({tuple(s.token_ids) for s in out.outputs}) > 1
    assert_no_blocks_held(llm)


def test_seeded_sampling_ignores_the_rest_of_the_batch(llama):
    folder, _ = llama
    prompts = random_prompts([6, 13, 4], seed=7)
    llm = make_llm(folder)
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=123, max_tokens=8, ignore_eos=True)
    alone = token_ids(llm.generate(prompts[:1], seeded))
    other = SamplingParams(temperature=1.0, max_tokens=5, ignore_eos=True)
    batch = llm.generate(prompts, [seeded, other, other])
    assert token_ids(batch)[:1] == alone


def test_logprobs_and_prompt_logprobs_close_to_hf(llama):
    folder, hf_model = llama
    prompt = random_prompts([12], seed=8)[0]
    llm = make_llm(folder, max_num_batched_tokens=5)  # prompt logprobs over several chunks
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3,
                            prompt_logprobs=2)
    (out,) = llm.generate([prompt], params)
    completion = out.outputs[0]
    full = prompt + completion.token_ids
    ref = torch.log_softmax(hf_logits(hf_model, full), dim=-1)
    for step, token in enumerate(completion.token_ids):
        entry = completion.logprobs[step]
        assert len(entry) == 3 and token in entry  # greedy token is the top-1
        assert entry[token].rank == 1
        for tok, lp in entry.items():
            assert lp.logprob == pytest.approx(ref[len(prompt) - 1 + step, tok].item(), abs=1e-4)
    assert out.prompt_logprobs[0] is None
    for pos in range(1, len(prompt)):
        entry = out.prompt_logprobs[pos]
        assert entry[prompt[pos]].logprob == pytest.approx(ref[pos - 1, prompt[pos]].item(),
                                                           abs=1e-4)
    assert completion.cumulative_logprob == pytest.approx(
        sum(completion.logprobs[i][t].logprob for i, t in enumerate(completion.token_ids)))


def test_stop_string_truncates_text_and_frees_blocks(llama):
    folder, _ = llama
    llm = make_llm(folder)
    prompt = random_prompts([5], seed=9)[0]
    (full,) = llm.generate([prompt], GREEDY)
    words = full.outputs[0].text.split()
    stop = words[3]
    (out,) = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True,
                                                   stop=[stop]))
    first = words.index(stop)
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert out.outputs[0].text.split() == words[:first]
    assert_no_blocks_held(llm)


BAD_PARAMS = [dict(temperature=-1), dict(top_p=0), dict(top_k=-5), dict(max_tokens=0),
              dict(n=0), dict(logprobs=100), dict(stop=[""]), dict(min_p=2.0)]


@pytest.mark.parametrize("fields", BAD_PARAMS)
def test_invalid_sampling_fields_raise(fields):
    with pytest.raises(ValueError, match=next(iter(fields))):
        SamplingParams(**fields)


def test_bad_input_raises_and_the_engine_keeps_serving(llama):
    folder, hf_model = llama
    llm = make_llm(folder, max_model_len=40)
    good = random_prompts([6], seed=10)
    with pytest.raises(ValueError, match="context"):
        llm.generate(random_prompts([40]), GREEDY)
    with pytest.raises(ValueError, match="empty"):
        llm.generate([""], GREEDY)
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], GREEDY)
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([[5, 100000]], GREEDY)
    with pytest.raises(ValueError, match="logit_bias"):
        llm.generate(good, SamplingParams(logit_bias={10**6: 1.0}))
    with pytest.raises(ValueError):  # one bad prompt in a batch queues none of them
        llm.generate([good[0], ""], GREEDY)
    assert_no_blocks_held(llm)
    assert token_ids(llm.generate(good, GREEDY)) == expected(hf_model, good)


@pytest.mark.parametrize("include", [False, True])
def test_stop_token_ends_the_output_and_its_text_is_left_out(llama, include):
    folder, _ = llama
    llm = make_llm(folder)
    prompt = random_prompts([5], seed=9)[0]
    (full,) = llm.generate([prompt], GREEDY)
    tokens, words = full.outputs[0].token_ids, full.outputs[0].text.split()
    stop_id = tokens[2]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True,
                            stop_token_ids=[stop_id], include_stop_str_in_output=include)
    (out,) = llm.generate([prompt], params)
    first = tokens.index(stop_id)
    completion = out.outputs[0]
    assert completion.token_ids == tokens[:first + 1]
    assert completion.finish_reason == "stop" and completion.stop_reason == stop_id
    assert completion.text.split() == words[:first + 1 if include else first]


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_min_tokens_keeps_eos_away_as_hf_min_new_tokens(llama, ignore_eos):
    """EOS is the greedy first token here; with min_tokens = 5 neither HF (min_new_tokens) nor
    Octavo may sample it for five tokens, ignore_eos or not."""
    folder, hf_model = llama
    prompt = random_prompts([7], seed=3)[0]
    eos = hf_greedy(hf_model, prompt, 1)[0]
    hf = hf_model.generate(torch.tensor([prompt]), min_new_tokens=5, max_new_tokens=5,
                           eos_token_id=eos, pad_token_id=eos, do_sample=False)[0, len(prompt):]
    llm = make_llm(folder)
    llm.engine.eos_token_ids = frozenset({eos})
    params = SamplingParams(temperature=0, min_tokens=5, max_tokens=5, ignore_eos=ignore_eos)
    (out,) = llm.generate([prompt], params)
    assert eos not in out.outputs[0].token_ids
    assert out.outputs[0].token_ids == hf.tolist()
    assert_no_blocks_held(llm)
