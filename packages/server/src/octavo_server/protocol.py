"""Request and response bodies in the shape of OpenAI's API (and vLLM's extra fields).

Request models are strict (``"3"`` is not an int, ``false`` is not token 0; ``2.0`` is 2, as
in JSON Schema) and carry their ranges and the rules between their fields, so the OpenAPI
schema FastAPI derives from them says what the server accepts. Every string must be valid
Unicode (no lone UTF-16 surrogate, which JSON can spell as ``\\ud800``).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from octavo.sampling_params import MAX_LOGPROBS, SamplingParams


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# -- errors ----------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# -- field types -----------------------------------------------------------------------------
INVALID_UNICODE = "invalid_unicode"  # the pydantic error type of a string with a surrogate
_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_unicode(text: str) -> str:
    found = _SURROGATE.search(text)
    if found:
        raise PydanticCustomError(
            INVALID_UNICODE, "holds a lone UTF-16 surrogate (U+{code}) at character {at}; "
            "strings must be valid Unicode", {"code": f"{ord(found.group()):04X}",
                                              "at": found.start()})
    return text


TOKEN_ID_MARK = "x-token-id"  # the OpenAPI schema bounds these by the vocabulary


def _whole_number(value: Any) -> Any:
    """``2.0`` is the integer 2, as JSON Schema counts it; ``2.5``, ``"2"`` and ``true`` stay
    what they are, and the strict int check refuses them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(ge: int | None = None, le: int | None = None, **schema: Any) -> Any:
    """An int field's type: ``ge`` <= it <= ``le``, and ``2.0`` counts as 2."""
    return Annotated[int, Field(ge=ge, le=le, json_schema_extra=schema or None),
                     BeforeValidator(_whole_number)]


Text = Annotated[str, AfterValidator(_valid_unicode)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_valid_unicode)]
TokenId = integer(ge=0, **{TOKEN_ID_MARK: True})
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Logprobs = integer(ge=0, le=MAX_LOGPROBS)
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what the engine accepts


def _needs_true(field: str, flag: str) -> dict[str, Any]:
    """JSON Schema for: ``field``, when given and not null, needs ``flag: true``."""
    return {"if": {"required": [field], "properties": {field: {"not": {"type": "null"}}}},
            "then": {"required": [flag], "properties": {flag: {"const": True}}}}


class RequestModel(BaseModel):
    """Strict, finite numbers; unknown fields are ignored, as OpenAI's server does."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


# -- shared request fields -------------------------------------------------------------------
class StreamOptions(RequestModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage on every chunk


class SamplingRequest(RequestModel):
    """Fields completions and chat share."""

    model_config = ConfigDict(json_schema_extra={"allOf": [_needs_true("stream_options",
                                                                       "stream")]})

    model: Text | None = None
    n: integer(ge=1) = Field(
        1, description="Completions per prompt (at most the server's --max-n).")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: NonEmptyText | list[NonEmptyText] | None = None
    seed: integer(ge=SEED_MIN, le=SEED_MAX) | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: Annotated[
        dict[Annotated[str, Field(pattern="^[0-9]+$")], Annotated[float, Field(ge=-100, le=100)]],
        Field(json_schema_extra={"additionalProperties": False}),
    ] | None = Field(None, description="Token id (as a string of digits) -> bias added to its "
                     "logit.")
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="Only with stream: true.")
    user: Text | None = None
    # vLLM's extra sampling fields
    top_k: integer(ge=-1) | None = Field(None, description="0 or -1: off.")
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: integer(ge=0) = 0
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    priority: integer() = 0

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, options, info: ValidationInfo):
        if options is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return options

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int | None, logprobs: int | None = None,
                        prompt_logprobs: int | None = None) -> SamplingParams:
        """The engine's parameters; raises ValueError naming the field on a bad value."""
        given = {
            "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
            "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
        }
        return SamplingParams(
            n=self.n, max_tokens=max_tokens, seed=self.seed, stop=self.stop,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias=self.logit_bias, min_tokens=self.min_tokens, ignore_eos=self.ignore_eos,
            stop_token_ids=self.stop_token_ids, skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            **{name: value for name, value in given.items() if value is not None})


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


# -- completions -----------------------------------------------------------------------------
class CompletionRequest(SamplingRequest):
    prompt: (NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)] | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1)])
    max_tokens: integer(ge=1) | None = 16
    logprobs: Logprobs | None = None
    echo: bool = False
    best_of: integer(ge=1) | None = Field(None, description="Must equal n when given.")
    suffix: Text | None = Field(None, json_schema_extra={"maxLength": 0},
                                description="Not supported: leave it out or empty.")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix):
        if suffix:
            raise ValueError("suffix is not supported")
        return suffix

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, best_of, info: ValidationInfo):
        if best_of is not None and "n" in info.data and best_of != info.data["n"]:
            raise ValueError("best_of must equal n: ranking extra samples is not supported")
        return best_of


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# -- chat ------------------------------------------------------------------------------------
class TextPart(RequestModel):
    type: Literal["text"]
    text: Text


class ChatMessage(RequestModel):
    """One turn; every role needs its content (tool calls are not supported)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None


class ResponseFormat(RequestModel):
    type: Literal["text"] = "text"


class ChatCompletionRequest(SamplingRequest):
    model_config = ConfigDict(json_schema_extra={"allOf": [
        _needs_true("stream_options", "stream"), _needs_true("top_logprobs", "logprobs")]})

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: integer(ge=1) | None = Field(
        None, description="Default: the rest of the context after the prompt.")
    max_tokens: integer(ge=1) | None = Field(None, description="Older name of "
                                   "max_completion_tokens (which wins when both are given).")
    logprobs: bool = False
    top_logprobs: Logprobs | None = Field(None, description="Only with logprobs: true.")
    add_generation_prompt: bool = True
    tools: list[dict[str, Any]] | None = Field(
        None, max_length=0, description="Not supported: leave it out or empty.")
    response_format: ResponseFormat | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, top_logprobs, info: ValidationInfo):
        if top_logprobs is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs set to true")
        return top_logprobs


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo | None = None


class DeltaMessage(BaseModel):
    """Only what changed: ``{"role": ...}`` first, then ``{"content": ...}``, ``{}`` at the end."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler):
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


# -- models, tokenizer -----------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "octavo"
    root: str | None = None
    max_model_len: int | None = None  # None until the model has been loaded once
    state: Literal["loaded", "loading", "unloaded"] | None = None
    pinned: bool = False  # never evicted nor unloaded when idle
    aliases: list[str] = Field(default_factory=list)  # other names clients may send
    memory_bytes: int | None = None  # measured tensor bytes of the loaded engine


class SwapRequest(BaseModel):
    """``POST /admin/models/{name}/swap``: serve the model from a new checkpoint."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="The new folder, weights file, GGUF file or "
                      "hub id; the model's engine options are kept.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(RequestModel):
    """Exactly one of ``prompt`` and ``messages``."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]})

    model: Text | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1, validate_default=True)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @field_validator("messages")
    @classmethod
    def _one_input(cls, messages, info: ValidationInfo):
        if (info.data.get("prompt") is None) == (messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return messages


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(RequestModel):
    model: Text | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str
