"""Admin routes: load, unload, pin and swap a served model (behind ``--api-key``).

Each answers the model's card as it is afterwards (``GET /v1/models/{name}``'s shape).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from octavo_server.info import model_card
from octavo_server.models import api_errors
from octavo_server.protocol import ModelCard, SwapRequest
from octavo_server.state import app_state

router = APIRouter(prefix="/admin/models", tags=["admin"])


@router.post("/{name:path}/load")
async def load_model(name: str, request: Request) -> ModelCard:
    """Load the model now (nothing happens when it is loaded); 503 when the memory budget
    has no room even after evicting idle models."""
    manager = app_state(request).manager
    with api_errors():
        return model_card(await manager.engines.load(name))


@router.post("/{name:path}/unload")
async def unload_model(name: str, request: Request) -> ModelCard:
    """Stop routing to the model's engine and free it once its requests in flight finish;
    its next request loads it again. 409 for a pinned model."""
    manager = app_state(request).manager
    with api_errors():
        return model_card(await manager.engines.unload(name))


@router.post("/{name:path}/pin")
async def pin_model(name: str, request: Request) -> ModelCard:
    """Never evict the model nor unload it when idle (it still loads on first use)."""
    with api_errors():
        return model_card(app_state(request).manager.engines.pin(name, True))


@router.post("/{name:path}/unpin")
async def unpin_model(name: str, request: Request) -> ModelCard:
    with api_errors():
        return model_card(app_state(request).manager.engines.pin(name, False))


@router.post("/{name:path}/swap")
async def swap_model(name: str, body: SwapRequest, request: Request) -> ModelCard:
    """Load ``path`` and serve it under ``name``: requests from then on go to the new engine,
    those in flight finish on the old one, which is then freed. A path that does not load is
    a 400 naming ``path``, and the old engine keeps serving."""
    manager = app_state(request).manager
    with api_errors(load_status=400, load_param="path"):
        return model_card(await manager.engines.swap(name, body.path))
