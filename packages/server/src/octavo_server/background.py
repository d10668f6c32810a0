"""Run the server in a background thread (tests, notebooks, benchmarks in one process)."""

from __future__ import annotations

import socket
import threading
import time

from octavo_server.models import ModelManager
from octavo_server.server import DrainingServer
from octavo_server.settings import ServerSettings


class BackgroundServer:
    """A uvicorn server on ``host`` and a free port, in a daemon thread.

    ``with BackgroundServer(manager) as server: openai.OpenAI(base_url=server.url, ...)``.
    The engines' loops run on the server thread's event loop, so an engine belongs to one
    server for its whole life.
    """

    def __init__(self, manager: ModelManager, settings: ServerSettings | None = None,
                 host: str = "127.0.0.1") -> None:
        self._server = DrainingServer(manager, settings or ServerSettings(), log_level="warning")
        self.app = self._server.config.app
        self._socket = socket.socket()
        self._socket.bind((host, 0))
        self.port = self._socket.getsockname()[1]
        self.base_url = f"http://{host}:{self.port}"
        self.url = f"{self.base_url}/v1"
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
