"""Entry-point plugin of octavo_server."""

from octavo.plugins import hookimpl  # noqa: F401
