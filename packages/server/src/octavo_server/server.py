"""uvicorn, with a shutdown that ends overdue requests cleanly, a header deadline and a
connection cap (``connections.py``)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import uvicorn

from octavo_server.app import create_app
from octavo_server.connections import guarded_protocol
from octavo_server.models import ModelManager
from octavo_server.settings import ServerSettings

logger = logging.getLogger("octavo_server")
BACKSTOP_SECONDS = 5.0  # after the grace period and the aborts, uvicorn cancels what is left


class DrainingServer(uvicorn.Server):
    """On shutdown, in-flight requests get ``grace`` seconds to finish; then they are aborted,
    so streams still end with ``finish_reason: "abort"`` and ``[DONE]`` and plain requests
    return what they have, before uvicorn closes the connections."""

    def __init__(self, manager: ModelManager, settings: ServerSettings,
                 log_level: str | None = None) -> None:
        self.manager = manager
        self.engine_died: Exception | None = None
        self.grace = settings.shutdown_timeout
        config = uvicorn.Config(create_app(manager, settings),
                                log_level=log_level or settings.log_level,
                                http=guarded_protocol(settings), ws="none",
                                timeout_keep_alive=settings.keep_alive_timeout,
                                timeout_graceful_shutdown=self.grace + BACKSTOP_SECONDS)
        super().__init__(config)

    async def on_tick(self, counter: int) -> bool:
        """Also stop serving once an engine died (a tensor-parallel worker was lost): its
        requests were answered 503, and ``run`` exits non-zero so a supervisor restarts us."""
        if self.engine_died is None:
            self.engine_died = next((llm.dead for llm in self.manager.all_engines()
                                     if getattr(llm, "dead", None) is not None), None)
            if self.engine_died is not None:
                logger.error("shutting down: %s", self.engine_died)
                self.should_exit = True
        return await super().on_tick(counter)

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        super().run(sockets)
        if self.engine_died is not None and threading.current_thread() is threading.main_thread():
            raise SystemExit(1)  # `octavo serve`; a BackgroundServer's thread just ends

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = asyncio.ensure_future(self._abort_after_grace())
        try:
            await super().shutdown(sockets)
        finally:
            drain.cancel()

    async def _abort_after_grace(self) -> None:
        await asyncio.sleep(self.grace)
        for llm in self.manager.all_engines():
            await llm.abort_all()
