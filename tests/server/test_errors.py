"""Bad input gets the right status and an OpenAI-style error naming the field; the server
keeps serving. API keys (401) and the waiting-queue limit (503) on a second server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from .conftest import (
    CONTEXT,
    MODEL,
    assert_all_blocks_free,
    assert_error,
    post,
    scrape,
    start_server,
    tiny_model,
)

CHAT = [{"role": "user", "content": "w1 w2"}]
LONG_PROMPT = " ".join(["w5"] * (CONTEXT + 20))
NEAR_FULL_PROMPT = " ".join(["w6"] * (CONTEXT - 30))

# (path, body: dict or raw text, status, param, words in the message)
CASES = [
    ("/v1/completions", {"prompt": "w1", "max_tokens": "ten"}, 400, "max_tokens", "integer"),
    ("/v1/completions", {"prompt": "w1", "temperature": -1}, 400, "temperature",
     "greater than or equal to 0"),
    ("/v1/completions", {"prompt": "w1", "top_p": 1.5}, 400, "top_p", "top_p"),
    ("/v1/completions", {"prompt": "w1", "n": 0}, 400, "n", "greater than or equal to 1"),
    ("/v1/completions", {"prompt": "w1", "n": 129}, 400, "n", "n must be <= 128"),
    ("/v1/completions", {"prompt": "w1", "n": 2, "best_of": 3}, 400, "best_of", "equal n"),
    ("/v1/completions", {"prompt": "w1", "n": True}, 400, "n", "integer"),
    ("/v1/completions", {"prompt": "w1", "logprobs": 50}, 400, "logprobs", "20"),
    ("/v1/completions", {"prompt": "w1", "presence_penalty": 3}, 400, "presence_penalty", "2"),
    ("/v1/completions", {"prompt": "w1", "logit_bias": {"99999": 1}}, 400, "logit_bias",
     "vocabulary"),
    ("/v1/completions", {"prompt": "w1", "logit_bias": {"5": 300}}, 400, "logit_bias", "100"),
    ("/v1/completions", {"prompt": "w1", "logit_bias": {"five": 3}}, 400, "logit_bias",
     "pattern"),
    ("/v1/completions", {"prompt": "w1", "stop_token_ids": [-1]}, 400, "stop_token_ids[0]",
     "greater than or equal to 0"),
    ("/v1/completions", {"prompt": "w1", "min_tokens": 5, "max_tokens": 2}, 400, "min_tokens",
     "max_tokens"),
    ("/v1/completions", {"prompt": "w1", "stop": [""]}, 400, "stop", "at least 1 character"),
    ("/v1/completions", {"prompt": "w1", "max_tokens": "3"}, 400, "max_tokens", "integer"),
    ("/v1/completions", {"prompt": "w1", "seed": "abc"}, 400, "seed", "integer"),
    ("/v1/completions", {"prompt": "w1", "suffix": "w2"}, 400, "suffix", "suffix"),
    ("/v1/completions", {"prompt": "w1", "stream_options": {"include_usage": True}}, 400,
     "stream_options", "only allowed when stream is true"),
    ("/v1/completions", {"max_tokens": 3}, 400, "prompt", "required"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt", "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "at least 1 character"),
    ("/v1/completions", {"prompt": []}, 400, "prompt", "at least 1 item"),
    ("/v1/completions", {"prompt": [True]}, 400, "prompt", "valid"),
    ("/v1/completions", {"prompt": [1, 10**6]}, 400, "prompt", "token ids"),
    ("/v1/completions", {"prompt": "w1", "model": "gpt-17"}, 404, "model", "gpt-17"),
    ("/v1/completions", {"prompt": LONG_PROMPT}, 400, "prompt", "context"),
    ("/v1/completions", {"prompt": NEAR_FULL_PROMPT, "max_tokens": 100}, 400, "max_tokens",
     "context length"),
    ("/v1/completions", "{\"prompt\": \"w1\",", 400, None, "JSON"),
    ("/v1/completions", "[1, 2]", 400, None, "dictionary"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "at least 1"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "w1"}]}, 400,
     "messages[0].role", "system"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content",
     "required"),
    ("/v1/chat/completions", {"messages": [CHAT[0], {"role": "assistant", "content": None}]},
     400, "messages[1].content", "valid"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs",
     "needs logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "top_logprobs": 21}, 400,
     "top_logprobs", "20"),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "top_logprobs": 30}, 400,
     "top_logprobs", "less than or equal to 20"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 1000}, 400, "n", "128"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_object"}},
     400, "response_format.type", "'text'"),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 0}, 400,
     "max_completion_tokens", "greater than or equal to 1"),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": CONTEXT}, 400,
     "max_completion_tokens", "context length"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages[0].content",
     "text"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function"}]}, 400, "tools",
     "tools"),
    ("/v1/chat/completions", {"messages": CHAT, "model": "nope"}, 404, "model", "nope"),
    ("/tokenize", {"prompt": "w1", "messages": CHAT}, 400, "messages", "exactly one"),
    ("/tokenize", {}, 400, "messages", "exactly one"),
    ("/detokenize", {"tokens": [99999]}, 400, "tokens", "[0, "),
    ("/detokenize", {"tokens": [False]}, 400, "tokens[0]", "integer"),
    ("/v1/nothing", {}, 404, None, "Not Found"),
]


def test_bad_requests_get_clear_errors_while_a_stream_keeps_going(server):
    body = {"model": MODEL, "prompt": "w1 w2 w3", "max_tokens": 60, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=60) as http, \
            http.stream("POST", f"{server.url}/completions", json=body) as response:
        events = response.iter_lines()
        assert next(events).startswith("data:")
        for path, bad, status, param, words in CASES:
            assert_error(post(server.base_url, path, bad), status, param, words)
        payloads = [line[len("data: "):] for line in events if line.startswith("data:")]
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["usage"]["completion_tokens"] == 60
    ok = post(server.base_url, "/v1/completions", {"prompt": "w1", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
    assert_all_blocks_free(server.base_url)


def test_models_tokenize_detokenize_health_version(server, client, reference):
    (card,) = client.models.list().data
    assert card.id == MODEL and card.object == "model"
    assert card.model_extra["max_model_len"] == CONTEXT
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")
    tokens = post(server.base_url, "/tokenize", {"model": MODEL, "prompt": "w1 w2"}).json()
    assert tokens["tokens"] == list(reference.tokenizer("w1 w2").input_ids)
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == CONTEXT
    chat = post(server.base_url, "/tokenize", {"messages": CHAT}).json()
    assert chat["tokens"] == reference.apply_chat_template(CHAT)
    text = post(server.base_url, "/detokenize", {"tokens": tokens["tokens"]}).json()["prompt"]
    assert text == reference.tokenizer.decode(tokens["tokens"])
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert httpx.get(f"{server.base_url}/version").json()["version"]


KEY = "sekret"


@pytest.fixture(scope="module")
def strict_server(tiny_folder):
    """One sequence at a time, at most one waiting, and an API key."""
    background = start_server(tiny_model(tiny_folder, max_waiting_requests=1, max_num_seqs=1),
                              api_key=KEY)
    yield background
    background.stop()


def test_api_key_is_required_except_for_health_metrics_version(strict_server):
    base = strict_server.base_url
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
        assert_error(post(base, "/v1/completions", {"prompt": "w1"}, headers), 401, None, "key")
        assert httpx.get(f"{base}/v1/models", headers=headers).status_code == 401
        assert_error(post(base, "/tokenize", {"prompt": "w1"}, headers), 401, None, "key")
    for path in ("/health", "/metrics", "/version"):
        assert httpx.get(base + path).status_code == 200
    client = openai.OpenAI(base_url=strict_server.url, api_key=KEY, max_retries=0)
    assert client.completions.create(model=MODEL, prompt="w1", max_tokens=2).usage
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=strict_server.url, api_key="no", max_retries=0).models.list()


def test_a_full_waiting_queue_answers_503_then_recovers(strict_server):
    assert_queue_limit_holds(strict_server.base_url, {"authorization": f"Bearer {KEY}"})


def test_the_queue_limit_holds_with_a_third_party_scheduler(tiny_folder):
    """The example plugin's scheduler implements core's ``Scheduler`` interface without
    subclassing core's scheduler; the server reads its waiting count through the interface."""
    background = start_server(tiny_model(tiny_folder, max_waiting_requests=1, max_num_seqs=1,
                                         scheduler="example-fcfs"))
    try:
        assert_queue_limit_holds(background.base_url, {})
    finally:
        background.stop()


def assert_queue_limit_holds(base: str, auth: dict[str, str]) -> None:
    """With one sequence running and one waiting, a third request gets 503 ``queue_full``;
    once they are gone, requests are served again and every block is free."""
    long = {"model": MODEL, "prompt": "w1 w2", "max_tokens": 900, "temperature": 0,
            "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60, headers=auth) as http, \
            http.stream("POST", f"{base}/v1/completions", json=long) as running:
        lines = running.iter_lines()  # keep it: a dropped iterator closes the connection
        next(lines)  # it runs; the engine takes one sequence at a time
        with http.stream("POST", f"{base}/v1/completions", json=long) as waiting:
            assert waiting.status_code == 200
            assert scrape(base)["octavo_num_requests_waiting"] == 1
            full = post(base, "/v1/completions", {"prompt": "w1"}, auth)
            assert_error(full, 503, None, "busy")
            assert full.json()["error"]["code"] == "queue_full"
    ok = post(base, "/v1/completions", {"prompt": "w1", "max_tokens": 2}, auth)
    assert ok.status_code == 200
    assert_all_blocks_free(base)


def test_an_engine_failure_is_a_500_or_an_error_event_and_the_server_recovers(tiny_folder):
    served = tiny_model(tiny_folder, num_gpu_blocks_override=64)
    background = start_server(served)
    engine = served.llm.engine
    step = engine.step

    def broken_step():
        raise RuntimeError("kernel exploded")

    try:
        engine.step = broken_step
        failed = post(background.base_url, "/v1/completions", {"prompt": "w1", "max_tokens": 3})
        assert_error(failed, 500, None, "kernel exploded")
        with httpx.stream("POST", f"{background.url}/completions", timeout=30,
                          json={"prompt": "w1", "max_tokens": 3, "stream": True}) as response:
            events = [line for line in response.iter_lines() if line.startswith("data:")]
        assert "kernel exploded" in json.loads(events[0][len("data: "):])["error"]["message"]
        assert events[-1] == "data: [DONE]"
        engine.step = step
        ok = post(background.base_url, "/v1/completions", {"prompt": "w1", "max_tokens": 3})
        assert ok.status_code == 200
        assert_all_blocks_free(background.base_url)
    finally:
        background.stop()
