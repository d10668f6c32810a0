"""An OpenAPI schema that says what the server does, so clients generated from it work.

FastAPI documents a 422 the server never sends (it answers 400) and none of the errors it
does send; this fills in every route's errors in OpenAI's schema, with their headers, and the
settings that bound the fields (``--max-n``) and guard the routes (``--api-key``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from octavo_server.models import ModelManager
from octavo_server.protocol import SEED_MAX, SEED_MIN, TOKEN_ID_MARK, ErrorResponse
from octavo_server.settings import ServerSettings

OPEN_PATHS = frozenset({"/health", "/metrics", "/version"})  # no API key needed
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
_ERRORS = {
    "400": "A field has a bad type or value, the prompt does not fit the context, or the body "
           "is not JSON; `param` names the field. (swap) The new `path` does not load "
           "(`model_load_failed`); the old version keeps serving.",
    "401": "`--api-key` is set and the request lacks `Authorization: Bearer KEY`.",
    "404": "Unknown `model` (the message lists the served names).",
    "409": "The model is pinned: unpin it before unloading it.",
    "408": "The body did not arrive within `--body-timeout` seconds.",
    "413": "The body is larger than `--max-request-body-bytes`.",
    "500": "The engine failed, or the model failed to load on its first request "
           "(`model_load_failed`).",
    "503": "The server is at `--max-connections`, (generation) its waiting queue is full, or "
           "the memory budget has no room to load the model (`insufficient_memory`: every "
           "loaded model is busy or pinned).",
}
_HEADERS = {
    "401": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    "503": {"Retry-After": {"description": "Seconds to wait before retrying.",
                            "schema": {"type": "integer"}}},
}


_SSE_EVENT = {  # OpenAPI before 3.2: the schema of one event
    "type": "object",
    "properties": {"data": {"type": "string", "description": "A chunk as JSON, or `[DONE]`."}},
    "required": ["data"],
}


def generation_responses(response_model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """A generation route's 200: the whole response as JSON, or server-sent events."""
    return {200: {
        "model": response_model,
        "description": "The response; with `stream: true`, server-sent events instead: one "
                       "`data: {chunk}` per engine step, then `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    }}


def _statuses(path: str, method: str, settings: ServerSettings) -> list[str]:
    statuses = ["503"]  # the connection limit answers any route
    if method in ("post", "put", "patch"):
        statuses += ["400", "408", "413"]
    if path in GENERATION_PATHS or path in ("/tokenize", "/detokenize") or "{" in path:
        statuses.append("404")
    if path in GENERATION_PATHS or path in ("/tokenize", "/detokenize") or path.endswith(
            "/load"):
        statuses.append("500")  # a model that fails to load on first use
    if path.endswith("/unload"):
        statuses.append("409")
    if settings.api_key is not None and path not in OPEN_PATHS:
        statuses.append("401")
    return sorted(statuses)


def _document_errors(schema: dict[str, Any], settings: ServerSettings) -> None:
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in _statuses(path, method, settings):
                responses[status] = {
                    "description": _ERRORS[status],
                    "content": {"application/json": {"schema": _ERROR}},
                    **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
                }
            if settings.api_key is not None and path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}]


def _document_components(schema: dict[str, Any], settings: ServerSettings) -> None:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        properties = schemas.get(name, {}).get("properties", {})
        for field in ("n", "best_of"):
            if field in properties:
                _integer(properties[field])["maximum"] = settings.max_n
        if "seed" in properties:  # FastAPI writes bounds as floats: 2**64 - 1 would round up
            _integer(properties["seed"]).update(minimum=SEED_MIN, maximum=SEED_MAX)
    if settings.api_key is not None:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}


def _bound_by_token_ids(node: Any, manager: ModelManager) -> None:
    """Token ids below the (smallest) vocabulary of the served models, which the request
    models alone cannot say."""
    vocab = min((m.llm.info.vocab_size for m in manager), default=None)
    if isinstance(node, list):
        for item in node:
            _bound_by_token_ids(item, manager)
    if not isinstance(node, dict):
        return
    if node.pop(TOKEN_ID_MARK, False) and vocab is not None:
        node["maximum"] = vocab - 1
    for value in node.values():
        _bound_by_token_ids(value, manager)


def _integer(schema: dict[str, Any]) -> dict[str, Any]:
    """The integer member of a field's schema (``anyOf: [integer, null]`` or integer)."""
    return next((m for m in schema.get("anyOf", []) if m.get("type") == "integer"), schema)


def install_openapi(app: FastAPI, settings: ServerSettings) -> None:
    """Serve the corrected schema at ``/openapi.json``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _document_errors(schema, settings)
            _document_components(schema, settings)
            _bound_by_token_ids(schema["components"]["schemas"], app.state.octavo.manager)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
