"""The FastAPI app: routes, OpenAI-style errors, the API key and body limits, engine shutdown."""

from __future__ import annotations

import contextlib
from importlib.metadata import version

from fastapi import FastAPI

from octavo_server import admin, chat, completions, info
from octavo_server.errors import install_error_handlers
from octavo_server.metrics import ServerMetrics
from octavo_server.middleware import ApiKeyAuth, BodyLimit
from octavo_server.models import ModelManager
from octavo_server.openapi import OPEN_PATHS, install_openapi
from octavo_server.settings import ServerSettings
from octavo_server.state import AppState


def create_app(manager: ModelManager, settings: ServerSettings | None = None) -> FastAPI:
    """An app serving ``manager``'s models; it stops their engine loops when it shuts down.

    The header deadline and the connection cap belong to the HTTP server, not the app: run
    it with ``DrainingServer`` (or ``octavo serve``) to have them.
    """
    settings = settings or ServerSettings()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        await manager.engines.preload()  # the models a models file marks ``preload``
        yield
        await manager.shutdown()

    app = FastAPI(title="Octavo", version=version("octavo-server"), lifespan=lifespan)
    app.state.octavo = AppState(manager, ServerMetrics(manager), settings)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_body_bytes,
                       timeout=settings.body_timeout)
    if settings.api_key is not None:  # outermost: no body is read for a client without a key
        app.add_middleware(ApiKeyAuth, api_key=settings.api_key, open_paths=OPEN_PATHS)
    for module in (completions, chat, info, admin):
        app.include_router(module.router)
    install_openapi(app, settings)
    return app
