"""A request's prompts as checked token ids, without holding up the event loop.

Text longer than any prompt the context can hold is refused by its size, before it is
tokenized; tokenizing, chat templating and the engine's checks of token ids run in a worker
thread, so ``/health`` and every other request keep being answered meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from jinja2 import TemplateError

from octavo_server.errors import APIError
from octavo_server.models import ServedModel
from octavo_server.protocol import ChatMessage
from octavo_server.settings import ServerSettings

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


@dataclass
class Prompt:
    text: str | None  # None when the client sent token ids
    token_ids: list[int]


async def prompt_byte_limit(model: ServedModel, settings: ServerSettings) -> tuple[int, str]:
    """The most UTF-8 bytes of text a prompt may have, and why: ``--max-prompt-bytes``, or the
    model's context times the most bytes one token can stand for."""
    if settings.max_prompt_bytes is not None:
        return settings.max_prompt_bytes, "--max-prompt-bytes allows"
    per_token = await asyncio.to_thread(getattr, model, "max_token_bytes")  # once per model
    return (model.max_model_len * per_token,
            f"this model's context of {model.max_model_len} tokens can hold (a token stands "
            f"for at most {per_token} bytes)")


async def check_text_size(model: ServedModel, settings: ServerSettings, texts: Sequence[str],
                          param: str) -> None:
    """400 (naming ``param``) when ``texts`` together exceed the prompt byte limit; they are
    counted in characters first, so a huge text costs nothing to refuse."""
    limit, reason = await prompt_byte_limit(model, settings)
    size = sum(len(text) for text in texts)  # characters <= bytes
    if size <= limit:
        size = sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)
    if size > limit:
        raise APIError(400, f"{param} holds more than {limit} bytes of text, more than "
                       f"{reason}: shorten it", param=param, code=CONTEXT_LENGTH_EXCEEDED)


async def tokenize(model: ServedModel, settings: ServerSettings, prompt: str | list[int],
                   param: str = "prompt") -> Prompt:
    """Tokenize and check one prompt (the engine's own input rules); 400 on bad input."""
    if isinstance(prompt, str):
        await check_text_size(model, settings, [prompt], param)
    elif len(prompt) >= model.max_model_len:
        raise APIError(400, f"the prompt has {len(prompt)} tokens; this model's context is "
                       f"{model.max_model_len} tokens, which leaves no room to generate",
                       param=param, code=CONTEXT_LENGTH_EXCEEDED)
    try:
        text, token_ids = await asyncio.to_thread(model.llm.process_prompt, prompt)
    except ValueError as exc:
        raise APIError(400, str(exc), param=param, code=CONTEXT_LENGTH_EXCEEDED
                       if "context" in str(exc) else None) from exc
    return Prompt(text, token_ids)


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as the chat template expects them: text content, ``developer`` as ``system``."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": _text(m)}
            for m in messages]


def _text(message: ChatMessage) -> str:
    content = message.content
    return content if isinstance(content, str) else "".join(part.text for part in content)


async def chat_token_ids(model: ServedModel, settings: ServerSettings,
                         messages: list[ChatMessage], add_generation_prompt: bool = True
                         ) -> list[int]:
    """The conversation's tokens through the model's chat template (400 if it has none, or
    if the template refuses the conversation)."""
    dicts = message_dicts(messages)
    await check_text_size(model, settings, [m["content"] for m in dicts], "messages")
    try:
        return await asyncio.to_thread(model.llm.apply_chat_template, dicts,
                                       add_generation_prompt)
    except ValueError as exc:  # no chat template
        raise APIError(400, str(exc), param="messages") from exc
    except TemplateError as exc:  # the template's own checks (roles must alternate, ...)
        raise APIError(400, f"the chat template refused the messages: {exc}",
                       param="messages") from exc


async def chat_prompt(model: ServedModel, settings: ServerSettings, messages: list[ChatMessage],
                      add_generation_prompt: bool = True) -> Prompt:
    """The conversation as one checked prompt."""
    token_ids = await chat_token_ids(model, settings, messages, add_generation_prompt)
    return await tokenize(model, settings, token_ids, param="messages")


def check_context(model: ServedModel, prompt: Prompt, max_tokens: int | None,
                  max_tokens_field: str, prompt_field: str) -> None:
    """A prompt plus the tokens asked for must fit the model's context (400 as vLLM)."""
    limit = model.max_model_len
    if max_tokens is None or len(prompt.token_ids) + max_tokens <= limit:
        return
    raise APIError(
        400, f"this model's maximum context length is {limit} tokens; the request asks for "
        f"{len(prompt.token_ids) + max_tokens} ({len(prompt.token_ids)} in the {prompt_field}, "
        f"{max_tokens} in the completion): shorten the {prompt_field} or lower "
        f"{max_tokens_field}", param=max_tokens_field, code=CONTEXT_LENGTH_EXCEEDED)
