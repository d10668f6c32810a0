"""octavo_server: the OpenAI-compatible HTTP server (``octavo serve``)."""

from octavo_server.app import create_app
from octavo_server.models import ModelManager, ServedModel
from octavo_server.settings import ServerSettings

__all__ = ["ModelManager", "ServedModel", "ServerSettings", "create_app"]
