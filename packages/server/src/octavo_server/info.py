"""Routes beside generation: models, health, version, tokenizer, metrics."""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from octavo.entrypoints.model_manager import ManagedModel
from octavo_server.errors import APIError
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


def model_card(model: ManagedModel) -> ModelCard:
    """A configured model as it is now (``max_model_len`` once it has been loaded)."""
    engine = model.engine
    source = engine.source if engine is not None else model.spec.model
    return ModelCard(id=model.name, created=model.created, root=source or model.name,
                     max_model_len=model.max_model_len, state=model.state.value,
                     pinned=model.spec.pinned, aliases=list(model.spec.aliases),
                     memory_bytes=engine.memory_bytes if engine is not None else None)


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    """Every configured model with its state (loaded, loading, unloaded)."""
    return ModelList(data=[model_card(m) for m in app_state(request).manager.configured()])


@router.get("/v1/models/{name:path}")
async def retrieve_model(name: str, request: Request) -> ModelCard:
    return model_card(app_state(request).manager.get(name))


@router.get("/health", response_class=Response,
            responses={200: {"description": "The server is up (an empty body).",
                             "content": None}})
async def health(request: Request) -> Response:
    """200 while every loaded engine can run; 503 ``engine_dead`` once one died (a
    tensor-parallel worker was lost), so a supervisor (Ray Serve's health check of a replica,
    an orchestrator's probe) replaces the server."""
    for llm in app_state(request).manager.all_engines():
        if llm.dead is not None:
            raise APIError(503, str(llm.dead), code="engine_dead")
    return Response(status_code=200)


@router.get("/version")
async def server_version() -> dict[str, str]:
    return {"version": version("octavo-server")}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """The prompt's (or the conversation's) token ids; text longer than the context can hold
    is refused (400), as for generation."""
    state = app_state(request)
    async with await state.manager.lease(body.model) as model:
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
    async with await app_state(request).manager.lease(body.model) as model:
        vocab_size = model.llm.info.vocab_size
        bad = [t for t in body.tokens if t >= vocab_size]
        if bad:
            raise APIError(400, f"tokens must be in [0, {vocab_size}); got {bad[:5]}",
                           param="tokens")
        text = await asyncio.to_thread(model.tokenizer.decode, body.tokens)
    return DetokenizeResponse(prompt=text)


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text format.",
    "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(app_state(request).metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
