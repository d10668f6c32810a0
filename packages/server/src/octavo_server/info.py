"""Routes beside generation: models, health, version, tokenizer, metrics."""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from octavo_server.errors import APIError
from octavo_server.models import ServedModel
from octavo_server.prompts import chat_token_ids, check_text_size
from octavo_server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from octavo_server.state import app_state

router = APIRouter()


def _card(model: ServedModel) -> ModelCard:
    return ModelCard(id=model.name, created=model.created, root=model.source,
                     max_model_len=model.max_model_len)


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(m) for m in app_state(request).manager])


@router.get("/v1/models/{name:path}")
async def retrieve_model(name: str, request: Request) -> ModelCard:
    return _card(app_state(request).manager.get(name))


@router.get("/health", response_class=Response,
            responses={200: {"description": "The server is up (an empty body).",
                             "content": None}})
async def health() -> Response:
    return Response(status_code=200)


@router.get("/version")
async def server_version() -> dict[str, str]:
    return {"version": version("octavo-server")}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """The prompt's (or the conversation's) token ids; text longer than the context can hold
    is refused (400), as for generation."""
    state = app_state(request)
    model = state.manager.get(body.model)
    if body.messages is not None:
        token_ids = await chat_token_ids(model, state.settings, body.messages,
                                         body.add_generation_prompt)
    else:
        await check_text_size(model, state.settings, [body.prompt], "prompt")
        encoding = await asyncio.to_thread(model.tokenizer, body.prompt,
                                           add_special_tokens=body.add_special_tokens)
        token_ids = list(encoding.input_ids)
    return TokenizeResponse(count=len(token_ids), max_model_len=model.max_model_len,
                            tokens=token_ids)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    model = app_state(request).manager.get(body.model)
    vocab_size = model.llm.info.vocab_size
    bad = [t for t in body.tokens if t >= vocab_size]
    if bad:
        raise APIError(400, f"tokens must be in [0, {vocab_size}); got {bad[:5]}", param="tokens")
    return DetokenizeResponse(prompt=await asyncio.to_thread(model.tokenizer.decode, body.tokens))


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text format.",
    "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(app_state(request).metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
