"""StreamProgress: what the completions and chat streams have sent, and the usage it makes."""

from __future__ import annotations

import asyncio

from octavo.outputs import CompletionOutput, Logprob, RequestOutput
from octavo_server.generation import Generation, Prompt
from octavo_server.protocol import ChatCompletionRequest, CompletionRequest
from octavo_server.streaming import StreamProgress


def out(index: int, token_ids: list[int], delta_text: str = "", finish_reason: str | None = None,
        logprobs: bool = False) -> CompletionOutput:
    entries = [{t: Logprob(-float(t), 1, f"t{t}")} for t in token_ids] if logprobs else None
    return CompletionOutput(index=index, text="", token_ids=list(token_ids), logprobs=entries,
                            finish_reason=finish_reason, delta_text=delta_text)


def test_a_choice_gets_only_what_is_new():
    progress = StreamProgress(prompt_tokens=3)
    first = progress.advance(0, out(0, [5, 6], "ab", logprobs=True))
    assert first is not None
    assert (first.index, first.token_ids, first.first) == (0, [5, 6], True)
    assert [list(entry) for entry in first.logprobs] == [[5], [6]]

    second = progress.advance(0, out(0, [5, 6, 7], "c", logprobs=True))
    assert (second.token_ids, second.first) == ([7], False)
    assert [list(entry) for entry in second.logprobs] == [[7]]
    assert second.completion.delta_text == "c"
    assert progress.sent_tokens == {0: 3}


def test_no_logprobs_asked_gives_no_entries():
    delta = StreamProgress(prompt_tokens=1).advance(0, out(0, [4], "x"))
    assert delta.logprobs == []


def test_a_choice_with_nothing_new_is_skipped():
    progress = StreamProgress(prompt_tokens=3)
    progress.advance(1, out(1, [5], "a"))
    assert progress.advance(1, out(1, [5], "")) is None
    assert progress.sent_tokens == {1: 1}
    assert progress.advance(2, out(2, [], "")) is None
    assert 2 not in progress.sent_tokens  # a choice that never sent anything is still new


def test_text_without_a_new_token_is_sent():
    # text held back (a possible stop string) comes out later, with no new token
    progress = StreamProgress(prompt_tokens=3)
    progress.advance(0, out(0, [5, 6], ""))
    delta = progress.advance(0, out(0, [5, 6], "held"))
    assert delta is not None and delta.token_ids == []


def test_finishing_is_sent_once_and_never_again():
    progress = StreamProgress(prompt_tokens=3)
    progress.advance(0, out(0, [5], "a"))
    last = progress.advance(0, out(0, [5], "", finish_reason="stop"))
    assert last is not None and last.token_ids == [] and last.completion.finished
    assert progress.finished == {0}
    assert progress.advance(0, out(0, [5], "", finish_reason="stop")) is None
    assert progress.advance(0, out(0, [5, 9], "z", finish_reason="stop")) is None
    assert progress.sent_tokens == {0: 1}


def test_usage_sums_every_choice():
    progress = StreamProgress(prompt_tokens=5)
    progress.advance(0, out(0, [1, 2, 3], "abc"))
    progress.advance(3, out(1, [4], "d", finish_reason="length"))
    usage = progress.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 4, 9)
    assert progress.chunk_usage() is None


def test_continuous_usage_on_every_chunk():
    progress = StreamProgress(prompt_tokens=2, continuous_usage=True)
    progress.advance(0, out(0, [1], "a"))
    assert progress.chunk_usage() == progress.usage()
    assert progress.chunk_usage().total_tokens == 3


def test_of_reads_the_request_and_every_prompt():
    generation = Generation(None, [Prompt("a", [1, 2]), Prompt("b c", [3, 4, 5])], n=1)
    body = CompletionRequest(prompt=["a", "b c"], stream=True,
                             stream_options={"continuous_usage_stats": True})
    progress = StreamProgress.of(body, generation)
    assert (progress.prompt_tokens, progress.continuous_usage) == (5, True)
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], stream=True)
    assert StreamProgress.of(chat, generation).continuous_usage is False


def test_steps_number_choices_and_skip_steps_with_nothing_to_send():
    generation = Generation(None, [Prompt("a", [1]), Prompt("b", [2])], n=2)

    def request_output(outputs):
        return RequestOutput(request_id="r", prompt=None, prompt_token_ids=[1], outputs=outputs)

    steps = [
        (1, request_output([out(0, [7], "x"), out(1, [], "")])),
        (0, request_output([out(0, [], ""), out(1, [], "")])),  # nothing new: no chunk
        (1, request_output([out(0, [7], "", "stop"), out(1, [8], "y", "length")])),
        (1, request_output([out(0, [7], "", "stop"), out(1, [8], "", "length")])),
    ]

    async def outputs():
        for step in steps:
            yield step

    generation.outputs = outputs

    async def collect():
        progress = StreamProgress(prompt_tokens=2)
        sent = [[(d.index, d.token_ids) for d in deltas]
                async for _, deltas in progress.steps(generation)]
        return sent, progress

    sent, progress = asyncio.run(collect())
    assert sent == [[(2, [7])], [(2, []), (3, [8])]]
    assert progress.finished == {2, 3}
    assert progress.usage().completion_tokens == 2
