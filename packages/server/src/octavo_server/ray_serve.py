"""One model served by several engine replicas behind one OpenAI endpoint, on Ray Serve.

Two deployments (docs/distributed.md, "Replicas with Ray Serve"):

- ``OctavoReplica``: one engine each, ``num_replicas`` of them (or autoscaled between
  ``min_replicas`` and ``max_replicas``). A replica runs the same FastAPI app as
  ``octavo serve`` in-process (``forwarding.call_app``), so every route, error and stream is
  that app's, and names itself in the ``x-octavo-replica`` response header. Ray Serve's health
  check calls the app's ``/health``.
- ``OctavoIngress``: takes each HTTP request from Ray Serve's proxy and forwards it, whole,
  through a deployment handle whose router is Ray's ``PrefixCacheAffinityRouter``: requests
  whose prompts share a prefix go to the replica that already served it, so its prefix cache
  hits, unless the replicas' loads drift apart.

``serve run octavo_server.ray_serve:build_app model=PATH num_replicas=2`` deploys it (Ray
Serve's application builder); ``octavo serve --ray-replicas 2`` runs the same app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from octavo_server.errors import error_response
from octavo_server.forwarding import ForwardedRequest, Headers, call_app, routing_text
from octavo_server.settings import ServerSettings

logger = logging.getLogger("octavo_server")

APP_NAME = "octavo"
REPLICA_HEADER = "x-octavo-replica"
# Ray's prefix-aware router, named by the module that defines it: its public alias
# ``ray.serve.llm.request_router.PrefixCacheAffinityRouter`` imports ``ray.serve.llm``, which
# needs ``ray[llm]`` (vLLM, pyarrow); the router itself needs only ``ray[serve]``.
PREFIX_ROUTER = ("ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router."
                 "PrefixCacheAffinityRouter")
INGRESS_MAX_ONGOING_REQUESTS = 4096  # it only forwards: the replicas' limits are what count


class ReplicaOptions(BaseModel):
    """How many replicas, what each holds of the cluster, how requests reach them."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(
        None, ge=1, description="A fixed number of replicas (default 1 unless autoscaled).")
    min_replicas: int | None = Field(None, ge=0, description="Autoscaling's lower bound.")
    max_replicas: int | None = Field(None, ge=1, description="Autoscaling's upper bound.")
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="Autoscaling's target of requests in flight per replica "
        "(default: Ray Serve's).")
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests a replica holds at once; more wait in Ray Serve. "
        "High, because the engine batches whatever it holds (Ray's default is 5).")
    num_cpus: float = Field(1, ge=0, description="CPUs Ray reserves for each replica; the "
                            "replica runs torch on that many threads (at least 1).")
    num_gpus: float = Field(0, ge=0, description="GPUs Ray reserves for each replica.")
    routing_prefix_chars: int = Field(
        2048, ge=1, description="Characters of each prompt the router matches on.")
    prefix_imbalance: float = Field(
        16, ge=0, description="When the replicas' requests in flight differ by more than "
        "this, prefixes are ignored and the less loaded of two replicas is chosen.")

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> ReplicaOptions:
        autoscaled = self.min_replicas is not None or self.max_replicas is not None
        if autoscaled and self.num_replicas is not None:
            raise ValueError("give num_replicas (fixed) or min_replicas/max_replicas "
                             "(autoscaled), not both")
        if (self.min_replicas or 0) > (self.max_replicas or self.min_replicas or 1):
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """``serve.deployment`` options of the replicas."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "request_router_config": RequestRouterConfig(
                request_router_class=PREFIX_ROUTER,
                request_router_kwargs={"imbalanced_threshold": self.prefix_imbalance,
                                       "do_eviction": True}),
        }
        if self.min_replicas is None and self.max_replicas is None:
            options["num_replicas"] = self.num_replicas or 1
        else:
            bounds = {"min_replicas": self.min_replicas or 0,
                      "max_replicas": self.max_replicas or max(self.min_replicas or 1, 1)}
            if self.target_ongoing_requests is not None:
                bounds["target_ongoing_requests"] = self.target_ongoing_requests
            options["autoscaling_config"] = bounds
        return options


class OctavoReplica:
    """One engine and the server's app around it."""

    async def __init__(self, model: str | None, engine: dict[str, Any],
                       settings: ServerSettings) -> None:
        from octavo_server.app import create_app
        from octavo_server.cli import load_served_model
        from octavo_server.models import ModelManager

        _use_assigned_cpus()
        served = await asyncio.to_thread(load_served_model, model, settings, engine)
        self.app = create_app(ModelManager([served]), settings)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._identity: Headers = [(REPLICA_HEADER.encode(), self.replica_id.encode())]

    async def forward(self, request: ForwardedRequest) -> AsyncIterator[tuple[int, Headers] | bytes]:
        """The app's answer: ``(status, headers)``, then the body's chunks."""
        async with contextlib.aclosing(call_app(self.app, request, self._identity)) as answer:
            async for item in answer:
                yield item

    async def check_health(self) -> None:
        """Ray Serve calls this periodically; raising marks the replica unhealthy (it is
        replaced)."""
        probe = ForwardedRequest("GET", "/health", b"", [], b"", "/health")
        async with contextlib.aclosing(call_app(self.app, probe)) as answer:
            async for item in answer:
                if isinstance(item, tuple) and item[0] != 200:
                    raise RuntimeError(f"/health answered {item[0]}")

    async def __del__(self) -> None:
        await self._lifespan.__aexit__(None, None, None)  # stops the engine loop


def _use_assigned_cpus() -> None:
    """torch threads = the CPUs Ray reserved for this replica, so replicas do not fight."""
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


class OctavoIngress:
    """Forwards each HTTP request to a replica chosen by its prompt's prefix."""

    def __init__(self, replicas: DeploymentHandle, routing_prefix_chars: int) -> None:
        self.replicas = replicas.options(stream=True)
        self.routing_prefix_chars = routing_prefix_chars

    async def __call__(self, request: Request) -> Response:
        path = request.scope["path"]
        if path.startswith("/admin/"):
            return error_response(403, "admin routes are off behind Ray Serve: each would "
                                  "change one replica's engine; deploy the app again instead",
                                  code="admin_routes_disabled")
        body = await request.body()
        forwarded = ForwardedRequest(request.method, path, request.scope["query_string"],
                                     list(request.scope["headers"]), body,
                                     routing_text(path, body, self.routing_prefix_chars))
        answer: DeploymentResponseGenerator = self.replicas.forward.remote(forwarded)
        try:
            status, headers = await answer.__anext__()
        except Exception as exc:  # noqa: BLE001 - the replica died or could not be reached
            answer.cancel()
            logger.warning("no replica answered %s %s: %s", request.method, path, exc)
            return error_response(503, f"no engine replica could answer: {exc}; retry",
                                  code="replica_unavailable")
        response = StreamingResponse(_rest(answer), status_code=status)
        response.raw_headers = headers
        return response


async def _rest(answer: DeploymentResponseGenerator) -> AsyncIterator[bytes]:
    finished = False
    try:
        async for chunk in answer:
            yield chunk
        finished = True
    finally:
        if not finished:  # the client went away: the replica's app sees a disconnect
            answer.cancel()


def octavo_app(model: str | None, engine: dict[str, Any], settings: ServerSettings,
               options: ReplicaOptions) -> serve.Application:
    """The application: ``OctavoIngress`` in front of ``OctavoReplica`` replicas."""
    replicas = serve.deployment(OctavoReplica, name="OctavoReplica",
                                **options.deployment_options()).bind(model, engine, settings)
    ingress = serve.deployment(OctavoIngress, name="OctavoIngress",
                               ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS)
    return ingress.bind(replicas, options.routing_prefix_chars)


def build_app(args: dict[str, str]) -> serve.Application:
    """Ray Serve's application builder: ``serve run octavo_server.ray_serve:build_app
    model=PATH num_replicas=2 max_num_seqs=64``.

    ``args`` are ``ReplicaOptions`` fields, ``ServerSettings`` fields (``api_key``,
    ``max_waiting_requests``, ...), ``model`` and engine options (``octavo serve``'s, with
    underscores); unknown names are an error.
    """
    from octavo.entrypoints.llm import engine_config_from_kwargs

    rest = dict(args)
    options = ReplicaOptions(**_take(rest, ReplicaOptions.model_fields))
    settings = ServerSettings(**_take(rest, ServerSettings.model_fields))
    model = rest.pop("model", None)
    engine_config_from_kwargs(model, **rest)  # unknown or bad engine options fail here
    return octavo_app(model, rest, settings, options)


def _take(args: dict[str, str], names) -> dict[str, str]:
    return {name: args.pop(name) for name in list(args) if name in names}


def run(model: str | None, engine: dict[str, Any], settings: ServerSettings,
        options: ReplicaOptions) -> None:
    """Serve on a local Ray (or the cluster at ``RAY_ADDRESS``) at ``settings.host:port``
    until SIGTERM or Ctrl-C, then remove the app (and stop the local Ray)."""
    address = os.environ.get("RAY_ADDRESS")
    _stop_on_signals()
    try:
        ray.init(address=address or "local", namespace="octavo")
        _stop_on_signals()  # again: ray.init sets its own SIGTERM handler
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(octavo_app(model, engine, settings, options), name=APP_NAME,
                  route_prefix="/")
        logger.info("serving on Ray Serve at http://%s:%d/v1 (%s)", settings.host,
                    settings.port, _replicas_text(options))
        while True:
            signal.pause()
    except _Stopped:
        logger.info("stopping")
    finally:
        _stop_on_signals(signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if ray.is_initialized():
            with contextlib.suppress(Exception):
                if address:  # someone else's cluster: leave their other apps alone
                    serve.delete(APP_NAME)
                else:
                    serve.shutdown()
            ray.shutdown()


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived."""


def _raise_stopped(*_) -> None:
    raise _Stopped


def _stop_on_signals(handler=_raise_stopped) -> None:
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, handler)


def _replicas_text(options: ReplicaOptions) -> str:
    scaling = options.deployment_options()
    bounds = scaling.get("autoscaling_config")
    if bounds is None:
        return f"{scaling['num_replicas']} replicas"
    return f"{bounds['min_replicas']} to {bounds['max_replicas']} replicas"
