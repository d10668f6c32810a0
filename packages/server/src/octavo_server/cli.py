"""``octavo serve``: load a model and serve it over the OpenAI-compatible API."""

from __future__ import annotations

import logging
import signal
import socket
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from octavo.commands import engine_options
from octavo_server.settings import ServerSettings

if TYPE_CHECKING:  # the models module imports torch: not for ``octavo --help``
    from octavo_server.models import ModelManager

logger = logging.getLogger("octavo_server")


def _settings(**given: Any) -> ServerSettings:
    try:
        return ServerSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise click.UsageError(_one_line(exc)) from exc


def _one_line(exc: ValidationError) -> str:
    """``--api-key (OCTAVO_API_KEY): must not be empty: ...``, one clause per bad setting."""
    clauses = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        option = f"--{name.replace('_', '-')} (OCTAVO_{name.upper()})" if name else "settings"
        clauses.append(f"{option}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(clauses)


def server_options(func):
    """One ``--option`` per ``ServerSettings`` field, its help and default from the field."""
    for name in reversed(list(ServerSettings.model_fields)):
        if name == "served_model_name":  # repeatable: declared on ``serve`` itself
            continue
        field = ServerSettings.model_fields[name]
        kind = next((t for t in (int, float) if t in _members(field.annotation)), str)
        default = "" if field.default is None else f" [default: {field.default}]"
        func = click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None,
                            help=f"{field.description}{default}")(func)
    return func


def _members(annotation) -> tuple:
    return getattr(annotation, "__args__", (annotation,))


@click.command()
@click.option("-m", "--model", "models", multiple=True,
              help="Model path or hub id (default: the demo SmolLM2-135M-Instruct); repeat "
                   "it to serve several, each loaded on its first request.")
@click.option("--served-model-name", "names", multiple=True,
              help=ServerSettings.model_fields["served_model_name"].description)
@server_options
@engine_options
def serve(models, names, **options):
    """Serve a model over an OpenAI-compatible HTTP API.

    Every option is also an environment variable: OCTAVO_PORT=9000, OCTAVO_BLOCK_SIZE=32.
    """
    server = {name: options.pop(name) for name in ServerSettings.model_fields
              if name != "served_model_name"}
    settings = _settings(**server, served_model_name=names[0] if len(names) == 1 else None)
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(message)s")
    engine = {k: v for k, v in options.items() if v is not None}
    if settings.ray_replicas is not None:
        _serve_on_ray(models, names, settings, engine)
        return
    from octavo_server.models import ModelManager

    managed = (settings.models_file, settings.memory_budget_gib, settings.idle_unload_s)
    if len(models) <= 1 and all(option is None for option in managed):
        run_server(ModelManager([load_served_model(models[0] if models else None, settings,
                                                   engine)]), settings)
        return
    if not models and settings.models_file is None:
        from octavo.config import ModelSettings

        models = (ModelSettings().model,)  # OCTAVO_MODEL, or the demo
    if not names and settings.served_model_name is not None:
        names = (settings.served_model_name,)  # OCTAVO_SERVED_MODEL_NAME
    run_server(_multi_model_manager(list(models), list(names), settings, engine), settings)


def _serve_on_ray(models: tuple[str, ...], names: tuple[str, ...], settings: ServerSettings,
                  engine: dict[str, Any]) -> None:
    """``--ray-replicas N``: one model from N engine replicas on Ray Serve."""
    managed = (settings.models_file, settings.memory_budget_gib, settings.idle_unload_s)
    if len(models) > 1 or len(names) > 1 or any(option is not None for option in managed):
        raise click.UsageError("--ray-replicas serves one --model (not several, nor "
                               "--models-file, --memory-budget-gib or --idle-unload-s)")
    if settings.port == 0:
        raise click.UsageError("--ray-replicas needs a fixed --port: Ray Serve's proxy listens "
                               "on it")
    try:
        from octavo_server import ray_serve
    except ImportError as exc:
        raise click.ClickException(f"--ray-replicas needs Ray Serve ({exc}): "
                                   "pip install 'octavo-server[ray]'") from exc
    from octavo.config import ModelSettings

    model = models[0] if models else ModelSettings().model  # OCTAVO_MODEL, or the demo
    options = ray_serve.ReplicaOptions(num_replicas=settings.ray_replicas)
    try:
        ray_serve.run(model, engine, settings, options)
    except RuntimeError as exc:  # the app did not deploy (an engine failed to load)
        raise click.ClickException(str(exc)) from exc


def _multi_model_manager(models: list[str], names: list[str], settings: ServerSettings,
                         engine: dict[str, Any]) -> ModelManager:
    """Several models, each loaded on its first request (or at start-up with ``preload``)."""
    from octavo_server.models import ModelManager
    from octavo_server.models_file import (
        ModelsConfig,
        ModelsFileError,
        read_models_file,
        specs_from_options,
    )

    try:
        config = (read_models_file(settings.models_file, engine) if settings.models_file
                  else ModelsConfig())
        config.specs += specs_from_options(models, names, engine)
        manager = ModelManager(
            specs=config.specs, max_waiting_requests=settings.max_waiting_requests,
            memory_budget_gib=settings.memory_budget_gib or config.memory_budget_gib,
            idle_unload_s=settings.idle_unload_s or config.idle_unload_s)
    except (ModelsFileError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    for model in manager.configured():
        logger.info("model %r from %s: %s", model.name, model.spec.model,
                    "loaded at start-up" if model.spec.preload else "loaded on first request")
    return manager


def load_served_model(model: str | None, settings: ServerSettings, options: dict[str, Any]):
    """Load the engine and log what was loaded and how big its KV cache is."""
    from octavo.config import ModelSettings
    from octavo.entrypoints.async_llm import AsyncLLM
    from octavo_server.models import DEMO_MODEL_NAME, ServedModel

    try:
        model = model if model is not None else ModelSettings().model  # OCTAVO_MODEL
        llm = AsyncLLM(model, **options)
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


def run_server(manager: ModelManager, settings: ServerSettings) -> None:
    """Serve until SIGTERM or Ctrl-C; in-flight requests finish (or are aborted after
    ``shutdown_timeout``), then the process exits with status 0."""
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
    names = [m.name for m in manager.configured()]
    logger.info("serving %s at http://%s:%d/v1", ", ".join(map(repr, names)), shown_host, port)
    server = DrainingServer(manager, settings)
    # uvicorn handles SIGTERM and Ctrl-C, then raises the signal again once it is done; by then
    # the shutdown was clean, so that second delivery must not kill the process.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: None)
    server.run(sockets=[sock])
