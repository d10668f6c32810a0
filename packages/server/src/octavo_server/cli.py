"""``octavo serve``: load a model and serve it over the OpenAI-compatible API."""

from __future__ import annotations

import logging
import signal
import socket
from typing import Any

import click
from pydantic import ValidationError

from octavo.commands import engine_options
from octavo_server.settings import ServerSettings

logger = logging.getLogger("octavo_server")


def _settings(**given: Any) -> ServerSettings:
    try:
        return ServerSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from exc


@click.command()
@click.option("-m", "--model", default=None,
              help="Model path or hub id (default: the demo SmolLM2-135M-Instruct).")
@click.option("--served-model-name", default=None,
              help="The name clients send as `model` (default: the --model value).")
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: 8000; 0 picks a free one].")
@click.option("--api-key", default=None, help="Require this key (Authorization: Bearer KEY).")
@click.option("--max-waiting-requests", type=int, default=None,
              help="Answer 503 while this many requests wait [default: no limit].")
@click.option("--shutdown-timeout", type=float, default=None,
              help="On SIGTERM, seconds in-flight requests get before they are aborted "
                   "[default: 30].")
@click.option("--log-level", default=None, help="uvicorn's log level [default: info].")
@engine_options
def serve(model, served_model_name, host, port, api_key, max_waiting_requests, shutdown_timeout,
          log_level, **options):
    """Serve a model over an OpenAI-compatible HTTP API.

    Every option is also an environment variable: OCTAVO_PORT=9000, OCTAVO_BLOCK_SIZE=32.
    """
    settings = _settings(host=host, port=port, served_model_name=served_model_name,
                         api_key=api_key, max_waiting_requests=max_waiting_requests,
                         shutdown_timeout=shutdown_timeout, log_level=log_level)
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(message)s")
    served = load_served_model(model, settings, options)
    run_server(served, settings)


def load_served_model(model: str | None, settings: ServerSettings, options: dict[str, Any]):
    """Load the engine and log what was loaded and how big its KV cache is."""
    from octavo.config import ModelSettings
    from octavo.entrypoints.async_llm import AsyncLLM
    from octavo_server.models import DEMO_MODEL_NAME, ServedModel

    try:
        model = model if model is not None else ModelSettings().model  # OCTAVO_MODEL
        llm = AsyncLLM(model, **{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    source = model or DEMO_MODEL_NAME
    served = ServedModel(settings.served_model_name or source, llm, source,
                         max_waiting_requests=settings.max_waiting_requests)
    info = llm.info
    logger.info("loaded %s as %r: %s on %s, context %d tokens", source, served.name,
                info.architecture, info.device, info.max_model_len)
    logger.info("KV cache: %d blocks of %d tokens = %d tokens", info.num_kv_blocks,
                info.block_size, info.num_kv_blocks * info.block_size)
    return served


def run_server(served, settings: ServerSettings) -> None:
    """Serve until SIGTERM or Ctrl-C; in-flight requests finish (or are aborted after
    ``shutdown_timeout``), then the process exits with status 0."""
    from octavo_server.models import ModelManager
    from octavo_server.server import DrainingServer

    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    logger.info("serving %r at http://%s:%d/v1", served.name, shown_host, port)
    server = DrainingServer(ModelManager([served]), settings)
    # uvicorn handles SIGTERM and Ctrl-C, then raises the signal again once it is done; by then
    # the shutdown was clean, so that second delivery must not kill the process.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: None)
    server.run(sockets=[sock])
