"""``POST /v1/chat/completions``: messages rendered through the model's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from octavo.outputs import TokenLogprobDict
from octavo_server.errors import APIError
from octavo_server.generation import (
    Generation,
    check_context,
    final_usage,
    process_prompt,
    sampling_params,
)
from octavo_server.models import ServedModel
from octavo_server.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
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


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the chat template expects them: text content, ``developer`` as ``system``."""
    result = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            if any(part.type != "text" or part.text is None for part in content):
                raise APIError(400, "only text content parts are supported",
                               param=f"messages[{i}].content")
            content = "".join(part.text for part in content)
        role = "system" if message.role == "developer" else message.role
        result.append({"role": role, "content": content or ""})
    return result


def chat_token_ids(model: ServedModel, messages: list[ChatMessage],
                   add_generation_prompt: bool = True) -> list[int]:
    """The conversation's tokens through the model's chat template (400 if it has none)."""
    try:
        return model.llm.apply_chat_template(message_dicts(messages), add_generation_prompt)
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages") from exc


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    state = app_state(request)
    model = state.manager.get(body.model)
    if body.tools:
        raise APIError(400, "tools are not supported", param="tools")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise APIError(400, "only the text response_format is supported",
                       param="response_format")
    prompt = process_prompt(model, chat_token_ids(model, body.messages, body.add_generation_prompt),
                            param="messages")
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = getattr(body, field)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = sampling_params(lambda: body.sampling_params(max_tokens, logprobs),
                             {"max_tokens": field, "logprobs": "top_logprobs"})
    check_context(model, prompt, max_tokens, field, "messages")
    generation = await Generation.start(model, state.metrics, [prompt], params, body.priority)
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
