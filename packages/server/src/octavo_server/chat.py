"""``POST /v1/chat/completions``: messages rendered through the model's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from octavo.outputs import TokenLogprobDict
from octavo_server.generation import Generation, check_n, final_usage, sampling_params
from octavo_server.models import ServedModel
from octavo_server.openapi import generation_responses
from octavo_server.prompts import chat_prompt, check_context
from octavo_server.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatResponseMessage,
    ChatStreamChoice,
    DeltaMessage,
    TokenLogprob,
    TopLogprob,
    random_id,
)
from octavo_server.state import app_state
from octavo_server.streaming import ChoiceDelta, StreamProgress, event_stream, sse

router = APIRouter()


@router.post("/v1/chat/completions", responses=generation_responses(ChatCompletionResponse))
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    state = app_state(request)
    lease = await state.manager.lease(body.model)
    async with lease as model:
        check_n(body.n, state.settings)
        model.admit(body.n, "n" if body.n > 1 else "messages")  # before templating
        prompt = await chat_prompt(model, state.settings, body.messages,
                                   body.add_generation_prompt)
        # Without max_completion_tokens (or max_tokens), generate to the end of the context,
        # as vLLM does: the model's EOS, a stop condition or the client ends it sooner.
        field = ("max_completion_tokens" if body.max_completion_tokens is not None
                 else "max_tokens")
        max_tokens = getattr(body, field)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = sampling_params(lambda: body.sampling_params(max_tokens, logprobs),
                                 {"max_tokens": field, "logprobs": "top_logprobs"})
        check_context(model, prompt, max_tokens, field, "messages")
        generation = await Generation.start(model, state.metrics, [prompt], params,
                                            body.priority, prompt_field="messages")
        generation.hold(lease.keep())  # released once the engine request has ended
    response_id = random_id("chatcmpl")
    if body.stream:
        return event_stream(_chunks(body, generation, response_id, model), generation)
    (output,) = await generation.final_outputs_unless_disconnected(request)
    choices = [ChatChoice(index=c.index, message=ChatResponseMessage(content=c.text),
                          logprobs=_logprobs(body, c.token_ids, c.logprobs),
                          finish_reason=c.finish_reason, stop_reason=c.stop_reason)
               for c in output.outputs]
    return ChatCompletionResponse(id=response_id, model=model.name, choices=choices,
                                  usage=final_usage([output]))


def _logprobs(body: ChatCompletionRequest, token_ids: list[int],
              entries: list[TokenLogprobDict] | None) -> ChatLogprobs | None:
    """The tokens' logprobs, each with ``top_logprobs`` alternatives; None unless asked for."""
    if not body.logprobs:
        return None
    num_top = body.top_logprobs or 0
    content = []
    for token_id, entry in zip(token_ids, entries or []):
        chosen = entry[token_id]
        top = sorted(entry.values(), key=lambda lp: lp.rank)[:num_top]
        content.append(TokenLogprob(
            token=chosen.decoded_token, logprob=chosen.logprob,
            bytes=list(chosen.decoded_token.encode()),
            top_logprobs=[TopLogprob(token=lp.decoded_token, logprob=lp.logprob,
                                     bytes=list(lp.decoded_token.encode())) for lp in top]))
    return ChatLogprobs(content=content)


async def _chunks(body: ChatCompletionRequest, generation: Generation, response_id: str,
                  model: ServedModel) -> AsyncIterator[str]:
    """The role first for every choice, then content deltas, each choice's finish_reason, and
    usage last when asked."""
    progress = StreamProgress.of(body, generation)

    def chunk(choices, usage_info=None) -> str:
        return sse(ChatCompletionChunk(id=response_id, model=model.name, choices=choices,
                                       usage=usage_info))

    for index in range(generation.n):
        yield chunk([ChatStreamChoice(index=index, delta=DeltaMessage(role="assistant",
                                                                        content=""))])
    async for _, deltas in progress.steps(generation):
        yield chunk([_stream_choice(body, delta) for delta in deltas], progress.chunk_usage())
    if body.include_usage:
        yield chunk([], progress.usage())


def _stream_choice(body: ChatCompletionRequest, delta: ChoiceDelta) -> ChatStreamChoice:
    c = delta.completion
    return ChatStreamChoice(
        index=delta.index, delta=DeltaMessage(content=c.delta_text) if c.delta_text
        else DeltaMessage(), logprobs=_logprobs(body, delta.token_ids, delta.logprobs),
        finish_reason=c.finish_reason, stop_reason=c.stop_reason)
