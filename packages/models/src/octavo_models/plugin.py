"""Entry-point plugin of octavo_models."""

from octavo.plugins import hookimpl  # noqa: F401
