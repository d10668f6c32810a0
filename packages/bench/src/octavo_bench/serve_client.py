"""A streaming client for any OpenAI-compatible server (Octavo's, vLLM's, llama.cpp's).

Requests arrive as a Poisson process of a given rate (or all at once), at most
``max_concurrency`` in flight; each streams its completion and the client records when every
content chunk arrived. Any failure (HTTP error, an ``error`` event, a dropped stream, a
timeout) is recorded on the request, never raised, so a failing server ends the run with its
errors reported instead of a hang.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from octavo_bench.workload import BenchRequest

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"


@dataclass
class ServeOptions:
    base_url: str
    model: str
    endpoint: str = COMPLETIONS
    request_rate: float = math.inf  # requests/s of the Poisson arrivals; inf: all at once
    max_concurrency: int | None = None
    request_timeout: float = 600.0  # seconds for one whole request
    ignore_eos: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.endpoint not in (COMPLETIONS, CHAT_COMPLETIONS):
            raise ValueError(f"endpoint must be {COMPLETIONS} or {CHAT_COMPLETIONS}, "
                             f"got {self.endpoint!r}")
        if not self.request_rate > 0:
            raise ValueError(f"request rate must be positive, got {self.request_rate}")
        if self.max_concurrency is not None and self.max_concurrency <= 0:
            raise ValueError(f"max concurrency must be positive, got {self.max_concurrency}")
        if not self.request_timeout > 0:
            raise ValueError(f"request timeout must be positive, got {self.request_timeout}")


@dataclass
class RequestRecord:
    """What one streamed request did; times are ``time.perf_counter`` seconds."""

    prompt_len: int
    max_tokens: int
    sent: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrivals of content chunks
    usage_tokens: int | None = None  # completion_tokens from the server's usage, if sent
    finished: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else len(self.chunk_times)


def arrival_offsets(num_requests: int, rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request is sent: Poisson arrivals of ``rate``."""
    if math.isinf(rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    offsets, now = [], 0.0
    for _ in range(num_requests):
        offsets.append(now)
        now += rng.expovariate(rate)
    return offsets


def request_body(options: ServeOptions, prompt: str | list[int], max_tokens: int) -> dict:
    body: dict[str, Any] = {"model": options.model, "max_tokens": max_tokens, "stream": True,
                            "temperature": 0.0, "stream_options": {"include_usage": True}}
    if options.endpoint == CHAT_COMPLETIONS:
        if not isinstance(prompt, str):
            raise ValueError("the chat endpoint needs text prompts (--prompt-format text)")
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if options.ignore_eos:  # vLLM and Octavo read ignore_eos, llama-cpp-python min_tokens
        body["ignore_eos"] = True
        body["min_tokens"] = max_tokens
    return {**body, **options.extra_body}


async def stream_one(client: httpx.AsyncClient, options: ServeOptions, body: dict,
                     record: RequestRecord) -> None:
    """Send one streaming request and fill ``record``; never raises for server faults."""
    record.sent = time.perf_counter()
    try:
        await asyncio.wait_for(_stream(client, options, body, record), options.request_timeout)
    except asyncio.TimeoutError:
        record.error = f"timed out after {options.request_timeout:g} s"
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except ValueError as exc:  # malformed JSON in the stream
        record.error = f"bad stream data: {exc}"
    record.finished = time.perf_counter()


async def _stream(client: httpx.AsyncClient, options: ServeOptions, body: dict,
                  record: RequestRecord) -> None:
    url = options.base_url.rstrip("/") + options.endpoint
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            record.error = f"HTTP {response.status_code}: {_error_message(text)}"
            return
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if event.get("error"):
                record.error = f"error event: {_error_message(event)}"
                return
            usage = event.get("usage")
            if usage and usage.get("completion_tokens") is not None:
                record.usage_tokens = usage["completion_tokens"]
            if _content(event):
                record.chunk_times.append(time.perf_counter())
    record.error = "the stream ended before [DONE]"


def _content(event: dict) -> str:
    text = []
    for choice in event.get("choices") or ():
        delta = choice.get("delta")  # chat chunks carry a delta, completion chunks text
        text.append((delta.get("content") if delta is not None else choice.get("text")) or "")
    return "".join(text)


def _error_message(payload: str | dict) -> str:
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return payload.strip()[:300] or "(empty body)"
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error)[:300]


async def run_requests(options: ServeOptions, prompts: list[str | list[int]],
                       requests: list[BenchRequest],
                       on_done: Callable[[RequestRecord], None] | None = None,
                       ) -> tuple[list[RequestRecord], float]:
    """Send every request on its Poisson schedule; (records in request order, wall seconds)."""
    records = [RequestRecord(r.prompt_len, r.output_len) for r in requests]
    bodies = [request_body(options, p, r.output_len) for p, r in zip(prompts, requests)]
    offsets = arrival_offsets(len(requests), options.request_rate, options.seed)
    limit = asyncio.Semaphore(options.max_concurrency or len(requests) or 1)
    connections = options.max_concurrency or len(requests) or 1
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(options.request_timeout, connect=min(30.0, options.request_timeout))
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + offsets[i] - time.perf_counter()))
            async with limit:
                await stream_one(client, options, bodies[i], records[i])
            if on_done is not None:
                on_done(records[i])

        await asyncio.gather(*(one(i) for i in range(len(requests))))
    return records, time.perf_counter() - start


def served_model_name(base_url: str, timeout: float = 10.0) -> str:
    """The first model the server lists at ``/v1/models``."""
    url = base_url.rstrip("/") + "/v1/models"
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"could not read the served model from {url} ({exc}); "
                         "name it with --served-model") from exc
