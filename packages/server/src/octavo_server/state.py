"""What every route reaches through ``request.app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from octavo_server.metrics import ServerMetrics
from octavo_server.models import ModelManager
from octavo_server.settings import ServerSettings


@dataclass
class AppState:
    manager: ModelManager
    metrics: ServerMetrics
    settings: ServerSettings


def app_state(request: Request) -> AppState:
    return request.app.state.octavo
