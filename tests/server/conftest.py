"""A real uvicorn server on 127.0.0.1 (ephemeral port) serving a tiny random Llama."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from octavo import LLM, AsyncLLM
from octavo.testing.tiny_models import save_tiny_model
from octavo_server.background import BackgroundServer
from octavo_server.models import ModelManager, ServedModel
from octavo_server.settings import ServerSettings

MODEL = "tiny"
ENGINE = dict(device="cpu", block_size=4, num_gpu_blocks_override=2048, max_num_seqs=64)
CONTEXT = 1024


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-server")
    save_tiny_model(path, "llama", max_position_embeddings=CONTEXT)
    return path


def tiny_model(folder, name: str = MODEL, max_waiting_requests: int | None = None,
               **engine) -> ServedModel:
    llm = AsyncLLM(str(folder), **{**ENGINE, **engine})
    return ServedModel(name, llm, str(folder), max_waiting_requests=max_waiting_requests)


def start_server(*models: ServedModel, **settings) -> BackgroundServer:
    return BackgroundServer(ModelManager(list(models)), ServerSettings(**settings)).start()


@pytest.fixture(scope="session")
def server(tiny_folder):
    background = start_server(tiny_model(tiny_folder))
    yield background
    background.stop()


UNICODE_KEY = "clé-ñ-ключ"


@pytest.fixture(scope="module")
def unicode_key_server(tiny_folder):
    """A server whose API key is not ASCII."""
    background = start_server(tiny_model(tiny_folder), api_key=UNICODE_KEY)
    yield background
    background.stop()


@pytest.fixture(scope="session")
def reference(tiny_folder) -> LLM:
    """The offline engine on the same checkpoint, for greedy comparisons."""
    return LLM(str(tiny_folder), **ENGINE)


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def async_client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def scrape(base_url: str, model: str = MODEL) -> dict[str, float]:
    """``/metrics`` parsed by prometheus-client: sample name (plus a finished_reason) -> value,
    for the samples labelled with ``model``."""
    text = httpx.get(f"{base_url}/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model_name") != model or "le" in sample.labels:
                continue
            reason = sample.labels.get("finished_reason")
            values[f"{sample.name}[{reason}]" if reason else sample.name] = sample.value
    return values


def assert_all_blocks_free(base_url: str, model: str = MODEL) -> None:
    values = scrape(base_url, model)
    assert values["octavo_num_requests_running"] == 0
    assert values["octavo_num_requests_waiting"] == 0
    assert values["octavo_kv_cache_free_blocks"] == values["octavo_kv_cache_blocks"] > 0
    assert values["octavo_kv_cache_usage_perc"] == 0


def post(base_url: str, path: str, body, headers=None) -> httpx.Response:
    """POST ``body`` (a dict as JSON, or raw text or bytes as given)."""
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(base_url + path, content=content, timeout=30,
                      headers={"content-type": "application/json", **(headers or {})})


def assert_error(response: httpx.Response, status: int, param: str | None, words: str) -> dict:
    """The response is ``status`` in OpenAI's error schema, names ``param``, says ``words``."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert words in error["message"], error
    return error


def assert_still_serving(base_url: str, headers=None, model: str = MODEL) -> None:
    """A small request is answered, and then nothing runs or waits and every block is free."""
    ok = post(base_url, "/v1/completions", {"prompt": "w1", "max_tokens": 2}, headers)
    assert ok.status_code == 200, ok.text
    assert_all_blocks_free(base_url, model)


def serve_log_until(process, words: str) -> tuple[str, str]:
    """The ``octavo serve`` process's log up to the line holding ``words``, and the URL it
    serves at; the rest of its log is drained in a thread so it never blocks."""
    import re
    import threading

    log = []
    for line in process.stderr:
        log.append(line)
        if words in line:
            break
    text = "".join(log)
    url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", text).group(1)
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
    return text, url
