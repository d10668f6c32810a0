"""/v1/completions through the official openai client: the same text as ``octavo.LLM``."""

from __future__ import annotations

import asyncio

import pytest

from octavo import SamplingParams

from .conftest import MODEL

PROMPT = "w1 w2 w3 w4"


def greedy(reference, prompt, max_tokens=12, **kwargs):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, **kwargs)
    return reference.generate(prompt, params, use_tqdm=False)[0].outputs[0]


def test_greedy_text_equals_offline_engine(client, reference):
    expected = greedy(reference, PROMPT, ignore_eos=True)
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True})
    choice = result.choices[0]
    assert choice.text == expected.text and choice.finish_reason == "length"
    assert result.object == "text_completion" and result.model == MODEL
    assert result.id.startswith("cmpl-")
    assert result.usage.completion_tokens == 12
    assert result.usage.prompt_tokens == len(reference.tokenizer(PROMPT).input_ids)
    assert result.usage.total_tokens == result.usage.prompt_tokens + 12


def test_token_id_prompts_and_batches(client, reference):
    prompts = [[5, 9, 30, 7], [11, 3, 60]]
    result = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0,
                                       n=2)
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):
        expected = greedy(reference, prompt, max_tokens=6)
        assert [c.text for c in result.choices[2 * i:2 * i + 2]] == [expected.text] * 2
    assert result.usage.prompt_tokens == 7


def test_seeded_sampling_is_reproducible_and_n_choices_differ(client):
    def sample(seed):
        result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, n=3,
                                           temperature=1.0, seed=seed,
                                           extra_body={"ignore_eos": True})
        return [c.text for c in result.choices]

    first = sample(7)
    assert len(first) == 3 and sample(7) == first
    assert len(set(first)) > 1  # each choice has its own generator (seed + index)
    assert sample(8) != first


def test_stop_string_ends_the_text(client, reference):
    full = greedy(reference, PROMPT, max_tokens=12, ignore_eos=True).text
    words = full.split()
    stop = words[len(words) // 2]
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0,
                                       stop=[stop], extra_body={"ignore_eos": True})
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == full[:full.index(stop)]
    assert choice.model_extra["stop_reason"] == stop


def test_logprobs_match_the_engine(client, reference):
    expected = greedy(reference, PROMPT, max_tokens=5, logprobs=3, ignore_eos=True)
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0,
                                       logprobs=3, extra_body={"ignore_eos": True})
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    for token_id, entry, got, top in zip(expected.token_ids, expected.logprobs,
                                         logprobs.token_logprobs, logprobs.top_logprobs):
        assert got == pytest.approx(entry[token_id].logprob, abs=1e-4)
        assert 3 <= len(top) <= 4 and max(top.values()) == pytest.approx(got, abs=1e-4)
    offsets = logprobs.text_offset
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_echo_prepends_the_prompt_with_its_logprobs(client, reference):
    prompt_ids = reference.tokenizer(PROMPT).input_ids
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0,
                                       echo=True, logprobs=1)
    choice = result.choices[0]
    expected = greedy(reference, PROMPT, max_tokens=3)
    assert choice.text == PROMPT + expected.text
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(prompt_ids) + 3
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs[1:])


def test_stream_adds_up_to_the_full_text_and_ends_with_usage(client, reference):
    expected = greedy(reference, PROMPT, max_tokens=10, ignore_eos=True)
    chunks = list(client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    *content, last = chunks
    assert "".join(c.choices[0].text for c in content) == expected.text
    assert [c.choices[0].finish_reason for c in content][-1] == "length"
    assert all(c.usage is None for c in content)
    assert last.choices == [] and last.usage.completion_tokens == 10
    assert len({c.id for c in chunks}) == 1


def test_stream_with_echo_and_several_prompts(client, reference):
    prompts = ["w5 w6", "w7"]
    chunks = list(client.completions.create(model=MODEL, prompt=prompts, max_tokens=4,
                                            temperature=0, echo=True, stream=True))
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == {i: p + greedy(reference, p, max_tokens=4).text
                     for i, p in enumerate(prompts)}


def test_async_client_concurrent_requests(async_client, reference):
    prompts = [f"w{i} w{i + 1}" for i in range(1, 9)]

    async def main():
        return await asyncio.gather(*(
            async_client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0)
            for p in prompts))

    results = asyncio.run(main())
    for prompt, result in zip(prompts, results):
        assert result.choices[0].text == greedy(reference, prompt, max_tokens=6).text


def test_vllm_extra_fields_reach_the_engine(client, reference):
    full = greedy(reference, PROMPT, max_tokens=8, ignore_eos=True)
    stop_id = full.token_ids[3]
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
                                       extra_body={"ignore_eos": True,
                                                   "stop_token_ids": [stop_id]})
    choice = result.choices[0]
    first_stop = full.token_ids.index(stop_id)
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop_id
    assert result.usage.completion_tokens == first_stop + 1
    forced = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                                       logit_bias={"50": 100})
    assert forced.choices[0].text.split() == ["w47"] * 4  # token 50 is the word w47
    top_k_one = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=1,
                                          temperature=1.5, extra_body={"top_k": 1,
                                                                       "ignore_eos": True})
    assert top_k_one.choices[0].text == full.text  # top_k=1 is greedy at any temperature
