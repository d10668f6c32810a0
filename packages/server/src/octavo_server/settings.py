"""Server settings (env prefix ``OCTAVO_``); ``octavo serve`` maps its options onto them.

The limits a request meets, in the order it meets them: ``max_connections`` (the connection
is answered 503), ``header_timeout`` (the request's headers must arrive in time),
``max_request_body_bytes`` and ``body_timeout`` (its body), the API key, then the fields:
``max_n``, ``max_prompt_bytes`` (text refused before it is tokenized) and
``max_waiting_requests`` (in sequences).
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class ServerSettings(BaseSettings):
    """How the HTTP server listens and admits requests (the engine has its own settings)."""

    model_config = SettingsConfigDict(env_prefix="OCTAVO_", extra="forbid")

    models_file: str | None = Field(
        None, description="A TOML file of models to serve, each with its own engine options, "
        "aliases, pin and preload, and the memory budget (docs/server.md).")
    memory_budget_gib: float | None = Field(
        None, gt=0, description="With several models: GiB their engines (weights and KV cache) "
        "may take together; loading one evicts idle models beyond it (default: no budget).")
    idle_unload_s: float | None = Field(
        None, gt=0, description="With several models: unload a model nobody used for this "
        "many seconds (default: never).")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free port).")
    served_model_name: str | None = Field(
        None, description="The name clients send as `model` (default: the --model value, or "
        "SmolLM2-135M-Instruct for the demo); repeat it, once per --model, to name several.")
    api_key: str | None = Field(
        None, description="Require `Authorization: Bearer KEY` on every route but /health, "
        "/metrics and /version; compared as UTF-8 bytes (default: no key; an empty key is "
        "an error).")
    max_waiting_requests: int | None = Field(
        None, ge=1, description="Answer 503 when admitting a request would put more than "
        "this many sequences (prompts x n) in the waiting queue (default: no limit).")
    max_n: int = Field(
        128, ge=1, description="The largest `n` (and `best_of`) a request may ask for.")
    max_request_body_bytes: int = Field(
        16 * MiB, ge=1, description="Answer 413 to a request body larger than this.")
    max_prompt_bytes: int | None = Field(
        None, ge=1, description="Refuse a text prompt (or chat messages) longer than this "
        "many UTF-8 bytes before tokenizing it (default: the model's context times its "
        "longest vocabulary entry, which no text that fits the context exceeds).")
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection gets to send a request's headers "
        "(from its opening, or the end of its previous response) before it is closed.")
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request gets to send its whole body after its "
        "headers; then it is answered 408 and the connection closed.")
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle keep-alive connection stays open.")
    max_connections: int = Field(
        1024, ge=1, description="Open connections beyond this many are answered 503 and "
        "closed (keep it below `ulimit -n`).")
    shutdown_timeout: float = Field(
        30.0, ge=0, description="On SIGTERM, seconds in-flight requests get to finish before "
        "they are aborted.")
    log_level: str = Field("info", description="uvicorn's log level.")
    ray_replicas: int | None = Field(
        None, ge=1, description="Serve the model from this many engine replicas on Ray Serve "
        "(a local Ray, or the cluster at RAY_ADDRESS), a request going to the replica that "
        "served its prompt's prefix (docs/distributed.md); needs "
        "`pip install 'octavo-server[ray]'`.")

    @field_validator("api_key")
    @classmethod
    def _sendable_key(cls, key: str | None) -> str | None:
        if key is None:
            return None
        if not key:
            raise ValueError("must not be empty: leave it unset to serve without a key")
        if key != key.strip(" \t"):
            raise ValueError("must not start or end with a space or tab (HTTP strips them)")
        if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) < 0xE000 for c in key):
            raise ValueError("must not hold control characters (HTTP headers cannot carry them)")
        return key
