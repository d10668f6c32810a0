"""Entry-point plugin of octavo_quant."""

from octavo.plugins import hookimpl  # noqa: F401
