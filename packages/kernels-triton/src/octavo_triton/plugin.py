"""Entry-point plugin of octavo_triton."""

from octavo.plugins import hookimpl  # noqa: F401
