"""``POST /v1/completions``: text in, text out (OpenAI's legacy completions API)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from octavo.outputs import CompletionOutput, RequestOutput, TokenLogprobDict
from octavo_server.generation import Generation, check_n, final_usage, sampling_params
from octavo_server.openapi import generation_responses
from octavo_server.prompts import Prompt, check_context, tokenize
from octavo_server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    random_id,
)
from octavo_server.state import app_state
from octavo_server.streaming import ChoiceDelta, StreamProgress, event_stream, sse

router = APIRouter()


def _prompt_list(prompt) -> list[str | list[int]]:
    if isinstance(prompt, str) or isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


@router.post("/v1/completions", responses=generation_responses(CompletionResponse))
async def create_completion(body: CompletionRequest, request: Request):
    state = app_state(request)
    lease = await state.manager.lease(body.model)
    async with lease as model:
        texts = _prompt_list(body.prompt)
        check_n(body.n, state.settings)
        model.admit(len(texts) * body.n, "n" if body.n > 1 else "prompt")  # before tokenizing
        prompts = [await tokenize(model, state.settings, text) for text in texts]
        echo_logprobs = body.logprobs if body.echo else None
        params = sampling_params(lambda: body.sampling_params(body.max_tokens, body.logprobs,
                                                              echo_logprobs))
        for prompt in prompts:
            check_context(model, prompt, body.max_tokens, "max_tokens", "prompt")
        generation = await Generation.start(model, state.metrics, prompts, params,
                                            body.priority)
        generation.hold(lease.keep())  # released once every engine request has ended
    view = CompletionView(model.tokenizer, body, prompts)
    response_id = random_id("cmpl")
    if body.stream:
        return event_stream(view.chunks(generation, response_id, model.name),
                            generation)
    outputs = await generation.final_outputs_unless_disconnected(request)
    choices = [view.choice(generation.choice_index(i, c.index), out, c)
               for i, out in enumerate(outputs) for c in out.outputs]
    return CompletionResponse(id=response_id, model=model.name, choices=choices,
                              usage=final_usage(outputs))

class CompletionView:
    """Renders engine outputs as completion choices: echo, logprobs, text offsets."""

    def __init__(self, tokenizer, body: CompletionRequest, prompts: list[Prompt]) -> None:
        self.tokenizer = tokenizer
        self.body = body
        self.prompts = prompts
        self.text_offsets: dict[int, int] = {}  # choice index -> characters of its tokens so far

    def _prompt_text(self, prompt: Prompt) -> str:
        return prompt.text if prompt.text is not None else self.tokenizer.decode(prompt.token_ids)

    def _logprobs(self, token_ids: list[int], entries: list[TokenLogprobDict | None],
                  offset: int) -> CompletionLogprobs:
        result = CompletionLogprobs()
        for token_id, entry in zip(token_ids, entries):
            chosen = entry.get(token_id) if entry else None
            token = chosen.decoded_token if chosen else self.tokenizer.decode([token_id])
            result.tokens.append(token)
            result.token_logprobs.append(chosen.logprob if chosen else None)
            result.top_logprobs.append(
                {lp.decoded_token: lp.logprob for lp in sorted(entry.values(), key=_rank)}
                if entry else None)
            result.text_offset.append(offset)
            offset += len(token)
        return result

    def _echo_logprobs(self, output: RequestOutput, prompt: Prompt) -> CompletionLogprobs:
        entries = output.prompt_logprobs or [None] * len(prompt.token_ids)
        return self._logprobs(prompt.token_ids, entries, 0)

    def choice(self, index: int, output: RequestOutput, completion: CompletionOutput
               ) -> CompletionChoice:
        """The whole choice (a response that does not stream)."""
        whole = ChoiceDelta(index, completion, completion.token_ids, completion.logprobs or [],
                            first=True)
        return self._choice(output, whole, completion.text)

    def _choice(self, output: RequestOutput, delta: ChoiceDelta, text: str) -> CompletionChoice:
        """``text`` and the logprobs of ``delta``'s tokens, after the prompt on the choice's
        first chunk when echo is set."""
        prompt = self.prompts[delta.index // self.body.n]
        echo = self.body.echo and delta.first
        logprobs = None
        if self.body.logprobs is not None:
            logprobs = self._echo_logprobs(output, prompt) if echo else CompletionLogprobs()
            start = self.text_offsets.get(delta.index,
                                          len(self._prompt_text(prompt)) if echo else 0)
            fresh = self._logprobs(delta.token_ids, delta.logprobs, start)
            _extend(logprobs, fresh)
            self.text_offsets[delta.index] = start + sum(len(t) for t in fresh.tokens)
        if echo:
            text = self._prompt_text(prompt) + text
        completion = delta.completion
        return CompletionChoice(index=delta.index, text=text, logprobs=logprobs,
                                finish_reason=completion.finish_reason,
                                stop_reason=completion.stop_reason)

    async def chunks(self, generation: Generation, response_id: str, model_name: str
                     ) -> AsyncIterator[str]:
        progress = StreamProgress.of(self.body, generation)

        def chunk(choices, usage_info=None) -> str:
            return sse(CompletionResponse(id=response_id, model=model_name, choices=choices,
                                          usage=usage_info))

        async for output, deltas in progress.steps(generation):
            yield chunk([self._choice(output, delta, delta.completion.delta_text)
                         for delta in deltas], progress.chunk_usage())
        if self.body.include_usage:
            yield chunk([], progress.usage())


def _rank(logprob) -> int:
    return logprob.rank


def _extend(into: CompletionLogprobs, more: CompletionLogprobs) -> None:
    into.tokens += more.tokens
    into.token_logprobs += more.token_logprobs
    into.top_logprobs += more.top_logprobs
    into.text_offset += more.text_offset
