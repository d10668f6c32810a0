"""The FastAPI app: routes, OpenAI-style errors, API-key check, engine shutdown."""

from __future__ import annotations

import contextlib
import hmac
from importlib.metadata import version

from fastapi import FastAPI, Request

from octavo_server import chat, completions, info
from octavo_server.errors import error_response, install_error_handlers
from octavo_server.metrics import ServerMetrics
from octavo_server.models import ModelManager
from octavo_server.settings import ServerSettings
from octavo_server.state import AppState

OPEN_PATHS = frozenset({"/health", "/metrics", "/version"})


def create_app(manager: ModelManager, settings: ServerSettings | None = None) -> FastAPI:
    """An app serving ``manager``'s models; it stops their engine loops when it shuts down."""
    settings = settings or ServerSettings()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await manager.shutdown()

    app = FastAPI(title="Octavo", version=version("octavo-server"), lifespan=lifespan)
    app.state.octavo = AppState(manager, ServerMetrics(manager), settings)
    install_error_handlers(app)
    if settings.api_key:
        _require_api_key(app, settings.api_key)
    for module in (completions, chat, info):
        app.include_router(module.router)
    return app


def _require_api_key(app: FastAPI, api_key: str) -> None:
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if request.method == "OPTIONS" or request.url.path in OPEN_PATHS:
            return await call_next(request)
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return error_response(401, "a valid API key is required: send "
                                  "'Authorization: Bearer <key>'", code="invalid_api_key")
        return await call_next(request)
