"""Entry-point plugin of octavo_cuda."""

from octavo.plugins import hookimpl  # noqa: F401
