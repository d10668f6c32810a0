"""Server settings (env prefix ``OCTAVO_``); ``octavo serve`` maps its options onto them."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """How the HTTP server listens and admits requests (the engine has its own settings)."""

    model_config = SettingsConfigDict(env_prefix="OCTAVO_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free port).")
    served_model_name: str | None = Field(
        None, description="The name clients use in `model` (default: the --model value, or "
        "SmolLM2-135M-Instruct for the demo).")
    api_key: str | None = Field(
        None, description="Require `Authorization: Bearer KEY` on every route but /health, "
        "/metrics and /version.")
    max_waiting_requests: int | None = Field(
        None, ge=0, description="Answer 503 while this many requests wait for the engine "
        "(default: no limit).")
    shutdown_timeout: float = Field(
        30.0, ge=0, description="On SIGTERM, seconds in-flight requests get to finish before "
        "they are aborted.")
    log_level: str = Field("info", description="uvicorn's log level.")
