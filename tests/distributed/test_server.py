"""A server whose engine died (a tensor-parallel worker lost) answers 503 in OpenAI's schema
and stops, exiting non-zero (fast: the death is simulated in a one-rank engine)."""

from __future__ import annotations

import json
import time

import httpx

from octavo import AsyncLLM
from octavo.engine.executor import EngineDeadError
from octavo_server.background import BackgroundServer
from octavo_server.models import ModelManager, ServedModel
from octavo_server.settings import ServerSettings

from .conftest import ENGINE


def test_a_dead_engine_answers_503_and_stops_the_server(llama):
    folder, _ = llama
    llm = AsyncLLM(str(folder), **ENGINE)

    def dead(_scheduled):
        raise EngineDeadError("the engine is dead: tensor-parallel rank 1 (pid 1) was killed")

    llm.engine.core.runner.execute = dead
    server = BackgroundServer(ModelManager([ServedModel("tiny", llm, str(folder))]),
                              ServerSettings(shutdown_timeout=1)).start()
    body = json.dumps({"model": "tiny", "prompt": "w1 w2", "max_tokens": 2})
    response = httpx.post(server.url + "/completions", content=body, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "engine_dead" and "rank 1" in error["message"]
    assert error["type"] == "service_unavailable_error"
    deadline = time.monotonic() + 15
    while server._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server._thread.is_alive()  # it stopped serving by itself
    assert isinstance(server._server.engine_died, EngineDeadError)  # `octavo serve` exits 1
