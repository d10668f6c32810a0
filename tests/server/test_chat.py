"""/v1/chat/completions: messages through the chat template, streamed and not."""

from __future__ import annotations

import asyncio

from octavo import SamplingParams

from .conftest import MODEL

MESSAGES = [{"role": "system", "content": "w3 w4"}, {"role": "user", "content": "w5 w6 w7"}]
IGNORE_EOS = {"ignore_eos": True}


def offline_chat(reference, max_tokens=8, **kwargs):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kwargs)
    return reference.chat(MESSAGES, params, use_tqdm=False)[0]


def test_greedy_reply_equals_offline_chat(client, reference):
    expected = offline_chat(reference)
    result = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0,
                                            max_completion_tokens=8, extra_body=IGNORE_EOS)
    choice = result.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.outputs[0].text
    assert choice.finish_reason == "length"
    assert result.object == "chat.completion" and result.id.startswith("chatcmpl-")
    assert result.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert result.usage.completion_tokens == 8


def test_deprecated_max_tokens_and_content_parts(client, reference):
    parts = [{"role": "system", "content": [{"type": "text", "text": "w3 w4"}]},
             {"role": "user", "content": [{"type": "text", "text": "w5 w6 "},
                                          {"type": "text", "text": "w7"}]}]
    result = client.chat.completions.create(model=MODEL, messages=parts, temperature=0,
                                            max_tokens=8, extra_body=IGNORE_EOS)
    assert result.choices[0].message.content == offline_chat(reference).outputs[0].text


def test_stream_role_first_content_then_finish_then_usage(client, reference):
    expected = offline_chat(reference).outputs[0].text
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_completion_tokens=8, stream=True,
        stream_options={"include_usage": True}, extra_body=IGNORE_EOS))
    first, *content, last = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in content) == expected
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert last.choices == [] and last.usage.completion_tokens == 8
    assert all(c.usage is None for c in [first, *content])


def test_logprobs_and_top_logprobs(client, reference):
    expected = offline_chat(reference, max_tokens=4, logprobs=2).outputs[0]
    result = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0,
                                            max_completion_tokens=4, logprobs=True,
                                            top_logprobs=2, extra_body=IGNORE_EOS)
    content = result.choices[0].logprobs.content
    assert len(content) == 4
    for token_id, entry, item in zip(expected.token_ids, expected.logprobs, content):
        assert abs(item.logprob - entry[token_id].logprob) < 1e-4
        assert len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert item.bytes == list(item.token.encode())


def test_stream_n_choices_each_get_role_and_finish(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0.8, seed=3, n=3, max_completion_tokens=5,
        stream=True, extra_body=IGNORE_EOS))
    choices = [choice for chunk in chunks for choice in chunk.choices]
    assert [c.index for c in choices[:3]] == [0, 1, 2]  # the roles come first
    assert all(c.delta.role == "assistant" for c in choices[:3])
    assert sorted(c.index for c in choices if c.finish_reason) == [0, 1, 2]
    streamed = {i: "" for i in range(3)}
    for choice in choices:
        streamed[choice.index] += choice.delta.content or ""
    again = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.8, seed=3,
                                           n=3, max_completion_tokens=5, extra_body=IGNORE_EOS)
    assert [c.message.content for c in again.choices] == [streamed[i] for i in range(3)]


def test_async_streaming_chat(async_client, reference):
    expected = offline_chat(reference).outputs[0].text

    async def main():
        async def one():
            text = ""
            stream = await async_client.chat.completions.create(
                model=MODEL, messages=MESSAGES, temperature=0, max_completion_tokens=8,
                stream=True, extra_body=IGNORE_EOS)
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
            return text

        return await asyncio.gather(*(one() for _ in range(4)))

    assert asyncio.run(main()) == [expected] * 4
