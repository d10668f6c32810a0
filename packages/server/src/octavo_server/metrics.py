"""Prometheus metrics, each labelled by the served model's name.

Gauges (running and waiting requests, KV cache occupancy) are read from the engines when
/metrics is scraped; counters and latency histograms move as request outputs stream past.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from octavo.outputs import RequestOutput
from octavo_server.model_metrics import ModelEvents
from octavo_server.models import ModelManager

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                60.0, 120.0, 240.0, 480.0, 960.0)


class EngineGauges(Collector):
    """Engine load read at scrape time, one sample per served model."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "num_requests_running": ("Requests (sequences) running in the engine.", "num_running"),
            "num_requests_waiting": ("Requests waiting to be scheduled.", "num_waiting"),
            "num_requests_swapped": ("Requests preempted with their KV blocks swapped out.",
                                     "num_swapped"),
            "kv_cache_usage_perc": ("Fraction of KV cache blocks in use (1 = full).",
                                    "kv_cache_usage"),
            "kv_cache_free_blocks": ("KV cache blocks free (cached prefixes count as free).",
                                     "num_free_kv_blocks"),
            "kv_cache_blocks": ("KV cache blocks in total.", "num_kv_blocks"),
        }
        stats = {model.name: model.stats() for model in self.manager}
        for name, (doc, attr) in families.items():
            family = GaugeMetricFamily(f"octavo_{name}", doc, labels=["model_name"])
            for model_name, snapshot in stats.items():
                family.add_metric([model_name], float(getattr(snapshot, attr)))
            yield family


class SwapMetrics(Collector):
    """The swap tier's occupancy and traffic, and preemptions by mode, read at scrape time
    from ``EngineStats`` (counters since the engine started)."""

    GAUGES = {
        "kv_tier_blocks": ("Blocks in the swap tier (swap_space_gib; 0: none).",
                           "num_tier_blocks"),
        "kv_tier_free_blocks": ("Swap tier blocks free (cached prefixes count as free).",
                                "num_free_tier_blocks"),
    }
    COUNTERS = {
        "kv_blocks_swapped_out": ("KV blocks copied from the device pool to the swap tier.",
                                  "blocks_swapped_out"),
        "kv_blocks_swapped_in": ("KV blocks copied from the swap tier back to the device.",
                                 "blocks_swapped_in"),
        "kv_swap_out_bytes": ("Bytes copied to the swap tier.", "bytes_swapped_out"),
        "kv_swap_in_bytes": ("Bytes copied back from the swap tier.", "bytes_swapped_in"),
        "kv_tier_prefix_blocks_offloaded": (
            "Cached prefix blocks kept in the swap tier when the device pool evicted them.",
            "prefix_blocks_offloaded"),
        "kv_tier_prefix_hits": ("Prefix blocks of new requests served from the swap tier.",
                                "tier_prefix_hits"),
    }

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = {model.name: model.stats() for model in self.manager}
        for name, (doc, attr) in self.GAUGES.items():
            family = GaugeMetricFamily(f"octavo_{name}", doc, labels=["model_name"])
            for model_name, snapshot in stats.items():
                family.add_metric([model_name], float(getattr(snapshot.swap, attr)))
            yield family
        for name, (doc, attr) in self.COUNTERS.items():
            family = CounterMetricFamily(f"octavo_{name}", doc, labels=["model_name"])
            for model_name, snapshot in stats.items():
                family.add_metric([model_name], float(getattr(snapshot.swap, attr)))
            yield family
        family = CounterMetricFamily("octavo_preemptions_by_mode",
                                     "Preemptions by what became of the KV blocks.",
                                     labels=["model_name", "mode"])
        for model_name, snapshot in stats.items():
            family.add_metric([model_name, "swap"], float(snapshot.num_preemptions_swap))
            family.add_metric([model_name, "recompute"],
                              float(snapshot.num_preemptions_recompute))
        yield family


class ServerMetrics:
    """The app's own registry (so several apps in one process never collide)."""

    def __init__(self, manager: ModelManager) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineGauges(manager))
        self.registry.register(SwapMetrics(manager))
        self.model_events = ModelEvents(manager, self.registry)  # loads, unloads, swaps
        label = ["model_name"]

        def counter(name: str, doc: str, labels=label) -> Counter:
            return Counter(f"octavo_{name}", doc, labels, registry=self.registry)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(f"octavo_{name}", doc, label, buckets=buckets, registry=self.registry)

        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of scheduled requests.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.preemptions = counter("num_preemptions", "Times a running sequence was preempted.")
        self.prefix_cache_queries = counter("prefix_cache_queries",
                                            "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("prefix_cache_hits",
                                         "Prompt tokens served by the prefix cache.")
        self.requests_finished = counter("request_success", "Completions finished, by reason.",
                                         ["model_name", "finished_reason"])
        self.time_to_first_token = histogram("time_to_first_token_seconds",
                                             "Arrival to first generated token.", _LATENCY_BUCKETS)
        self.inter_token_latency = histogram("inter_token_latency_seconds",
                                             "Time between a request's successive outputs.",
                                             _LATENCY_BUCKETS)
        self.e2e_latency = histogram("e2e_request_latency_seconds",
                                     "Arrival to the last output.", _E2E_BUCKETS)

        for model in manager:  # every series exists (at zero) before the first request
            for metric in (self.prompt_tokens, self.generation_tokens, self.preemptions,
                           self.prefix_cache_queries, self.prefix_cache_hits,
                           self.time_to_first_token, self.inter_token_latency,
                           self.e2e_latency):
                metric.labels(model.name)
            for reason in ("stop", "length", "abort"):
                self.requests_finished.labels(model.name, reason)

    def tracker(self, model_name: str) -> RequestTracker:
        return RequestTracker(self, model_name)


class RequestTracker:
    """Folds one request's outputs into the metrics as they arrive."""

    def __init__(self, metrics: ServerMetrics, model_name: str) -> None:
        self.metrics = metrics
        self.model_name = model_name
        self._prompt_counted = False
        self._num_preemptions = 0
        self._last_output_time: float | None = None
        self._finished = False

    def observe(self, output: RequestOutput) -> None:
        m, name = self.metrics, self.model_name
        stats = output.metrics
        if stats is not None and not self._prompt_counted and stats.first_scheduled_time:
            self._prompt_counted = True
            m.prompt_tokens.labels(name).inc(stats.num_prompt_tokens)
            m.prefix_cache_queries.labels(name).inc(stats.num_prompt_tokens)
            m.prefix_cache_hits.labels(name).inc(stats.num_cached_tokens)
        new_tokens = sum(len(c.delta_token_ids) for c in output.outputs)
        if new_tokens:
            now = time.monotonic()
            m.generation_tokens.labels(name).inc(new_tokens)
            if self._last_output_time is None:
                if stats is not None and stats.time_to_first_token is not None:
                    m.time_to_first_token.labels(name).observe(stats.time_to_first_token)
            else:
                m.inter_token_latency.labels(name).observe(now - self._last_output_time)
            self._last_output_time = now
        if stats is not None and stats.num_preemptions > self._num_preemptions:
            m.preemptions.labels(name).inc(stats.num_preemptions - self._num_preemptions)
            self._num_preemptions = stats.num_preemptions
        if output.finished:
            self._finished = True
            for completion in output.outputs:
                m.requests_finished.labels(name, completion.finish_reason or "abort").inc()
            if stats is not None and stats.e2e_latency is not None:
                m.e2e_latency.labels(name).observe(stats.e2e_latency)

    def aborted(self, num_completions: int) -> None:
        """The client went away (or the server stopped) before the request finished."""
        if not self._finished:
            self._finished = True
            self.metrics.requests_finished.labels(self.model_name, "abort").inc(num_completions)
