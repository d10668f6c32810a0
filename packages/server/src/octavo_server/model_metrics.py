"""Prometheus metrics of the model manager: loads, unloads and swaps, and each model's state.

Labelled ``model_name`` like the engine metrics; an unload also says why (``evicted``,
``idle``, ``asked``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from octavo_server.models import ModelManager

_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_STATES = ("loaded", "loading", "unloaded")


class ModelStates(Collector):
    """Per configured model: its state (one series per state, 1 for the current one) and
    the measured bytes of its loaded engine."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily("octavo_model_state", "1 for the model's current state.",
                                  labels=["model_name", "state"])
        memory = GaugeMetricFamily("octavo_model_memory_bytes",
                                   "Measured tensor bytes of the model's loaded engine.",
                                   labels=["model_name"])
        for model in _configured(self.manager):
            for name in _STATES:
                state.add_metric([model.name, name], float(model.state.value == name))
            engine = model.engine
            memory.add_metric([model.name], float(engine.memory_bytes if engine else 0))
        yield state
        yield memory


class ModelEvents:
    """Counts and durations of loads, unloads and swaps, fed by the manager's events."""

    def __init__(self, manager: ModelManager, registry: CollectorRegistry) -> None:
        registry.register(ModelStates(manager))
        label = ["model_name"]
        self.loads = Counter("octavo_model_loads", "Engines loaded.", label, registry=registry)
        self.load_seconds = Histogram("octavo_model_load_seconds", "Time to load an engine.",
                                      label, buckets=_LOAD_BUCKETS, registry=registry)
        self.unloads = Counter("octavo_model_unloads", "Engines unloaded, by reason.",
                               ["model_name", "reason"], registry=registry)
        self.swaps = Counter("octavo_model_swaps", "Hot swaps to a new checkpoint.", label,
                             registry=registry)
        self.swap_seconds = Histogram("octavo_model_swap_seconds",
                                      "Time from a swap's start to serving the new engine.",
                                      label, buckets=_LOAD_BUCKETS, registry=registry)
        for model in _configured(manager):
            for metric in (self.loads, self.load_seconds, self.swaps, self.swap_seconds):
                metric.labels(model.name)
        if isinstance(manager, ModelManager):
            manager.listeners.append(self.observe)

    def observe(self, kind: str, name: str, details: dict[str, Any]) -> None:
        if kind == "load":
            self.loads.labels(name).inc()
            self.load_seconds.labels(name).observe(details["seconds"])
        elif kind == "swap":
            self.swaps.labels(name).inc()
            self.swap_seconds.labels(name).observe(details["seconds"])
        elif kind == "unload":
            self.unloads.labels(name, details["reason"]).inc()


def _configured(manager) -> list:
    """The configured models (none for a plain list of served models, as tests pass)."""
    return manager.configured() if isinstance(manager, ModelManager) else []
