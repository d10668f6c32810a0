"""Admin routes: load, unload, pin and swap a served model (behind ``--api-key``).

Each answers the model's card as it is afterwards (``GET /v1/models/{name}``'s shape). A swap
makes the server read any checkpoint path it is given, so a server that listens beyond the
loopback interface answers them only when it has an API key (403 otherwise).
"""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, Depends, Request

from octavo_server.errors import APIError
from octavo_server.info import model_card
from octavo_server.models import api_errors
from octavo_server.protocol import ModelCard, SwapRequest
from octavo_server.state import app_state


def admin_allowed(host: str, api_key: str | None) -> bool:
    """With a key always; without one only on a loopback address (``localhost``, 127.0.0.0/8,
    ``::1``), which only this machine reaches."""
    if api_key is not None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _require_a_key_beyond_loopback(request: Request) -> None:
    settings = app_state(request).settings
    if not admin_allowed(settings.host, settings.api_key):
        raise APIError(403, f"admin routes are off: this server listens on {settings.host} "
                       "without an API key; start it with --api-key KEY (or on 127.0.0.1)",
                       code="admin_routes_disabled")


router = APIRouter(prefix="/admin/models", tags=["admin"],
                   dependencies=[Depends(_require_a_key_beyond_loopback)])


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
