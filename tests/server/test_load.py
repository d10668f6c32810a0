"""Many streams at once, clients that drop mid-stream, and /metrics moving as requests run."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from octavo import SamplingParams

from .conftest import MODEL, assert_all_blocks_free, scrape, start_server, tiny_model


def test_64_concurrent_streams_complete_and_free_every_block(server, async_client):
    lengths = [4 + i % 13 for i in range(64)]

    async def one(i: int, max_tokens: int):
        stream = await async_client.completions.create(
            model=MODEL, prompt=f"w{i % 50} w{(7 * i) % 50} w3", max_tokens=max_tokens,
            temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True})
        text, finish, usage = "", None, None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.text
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
        return finish, usage.completion_tokens

    async def main():
        return await asyncio.gather(*(one(i, n) for i, n in enumerate(lengths)))

    before = scrape(server.base_url)
    results = asyncio.run(main())
    assert results == [("length", n) for n in lengths]
    after = scrape(server.base_url)
    assert after["octavo_generation_tokens_total"] - before["octavo_generation_tokens_total"] \
        == sum(lengths)
    assert after["octavo_request_success_total[length]"] \
        - before.get("octavo_request_success_total[length]", 0) == 64
    assert_all_blocks_free(server.base_url)


def wait_until_idle(base_url: str, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        values = scrape(base_url)
        if values["octavo_num_requests_running"] == 0 or time.monotonic() > deadline:
            return values
        time.sleep(0.02)


def test_a_client_that_drops_mid_stream_frees_its_blocks(server):
    before = scrape(server.base_url)
    body = {"model": MODEL, "prompt": "w1 w2 w3 w4 w5 w6 w7 w8 w9", "max_tokens": 1000,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as http, \
            http.stream("POST", f"{server.url}/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6)) if line.startswith("data:")]
        assert len(received) >= 3
        during = scrape(server.base_url)
        assert during["octavo_num_requests_running"] == 1
        assert during["octavo_kv_cache_usage_perc"] > 0
    # the connection is closed here, long before 1000 tokens
    after = wait_until_idle(server.base_url)
    assert after["octavo_request_success_total[abort]"] \
        - before.get("octavo_request_success_total[abort]", 0) == 1
    generated = after["octavo_generation_tokens_total"] - before["octavo_generation_tokens_total"]
    assert 3 <= generated < 1000
    assert_all_blocks_free(server.base_url)


def test_metrics_parse_and_move(server, client):
    before = scrape(server.base_url)
    for name in ("octavo_num_requests_running", "octavo_num_requests_waiting",
                 "octavo_kv_cache_usage_perc", "octavo_prompt_tokens_total",
                 "octavo_generation_tokens_total", "octavo_num_preemptions_total",
                 "octavo_prefix_cache_hits_total", "octavo_prefix_cache_queries_total",
                 "octavo_time_to_first_token_seconds_count",
                 "octavo_inter_token_latency_seconds_count",
                 "octavo_e2e_request_latency_seconds_count"):
        assert name in before, name
    prompt = " ".join(f"w{i}" for i in range(20, 40))  # 20 tokens: 5 full blocks of 4
    for _ in range(2):  # the second run finds the prompt's blocks in the prefix cache
        result = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5,
                                           temperature=0, extra_body={"ignore_eos": True})
    after = scrape(server.base_url)

    def moved(name):
        return after[name] - before.get(name, 0)

    assert moved("octavo_generation_tokens_total") == 10
    assert moved("octavo_prompt_tokens_total") == 2 * result.usage.prompt_tokens
    assert moved("octavo_prefix_cache_queries_total") == 2 * result.usage.prompt_tokens
    assert moved("octavo_prefix_cache_hits_total") >= 16
    assert moved("octavo_time_to_first_token_seconds_count") == 2
    assert moved("octavo_inter_token_latency_seconds_count") == 8
    assert moved("octavo_e2e_request_latency_seconds_count") == 2
    assert moved("octavo_e2e_request_latency_seconds_sum") > 0


def test_a_client_that_gives_up_on_a_plain_request_aborts_it(server):
    before = scrape(server.base_url)
    body = {"model": MODEL, "prompt": "w9 w8 w7", "max_tokens": 1000, "temperature": 0,
            "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/completions", json=body, timeout=0.3)
    after = wait_until_idle(server.base_url)
    assert after["octavo_request_success_total[abort]"] \
        - before.get("octavo_request_success_total[abort]", 0) == 1
    assert after["octavo_generation_tokens_total"] - before["octavo_generation_tokens_total"] \
        < 1000
    assert_all_blocks_free(server.base_url)


def test_preemptions_are_counted_and_every_request_still_completes(tiny_folder, reference):
    served = tiny_model(tiny_folder, num_gpu_blocks_override=12)  # 48 tokens of KV cache
    background = start_server(served)
    try:
        client = openai.AsyncOpenAI(base_url=background.url, api_key="unused", max_retries=0)

        async def main():
            return await asyncio.gather(*(client.completions.create(
                model=MODEL, prompt=f"w{i} w2 w3", max_tokens=20, temperature=0,
                extra_body={"ignore_eos": True}) for i in range(3)))

        results = asyncio.run(main())
        assert [r.usage.completion_tokens for r in results] == [20, 20, 20]
        greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
        expected = reference.generate([f"w{i} w2 w3" for i in range(3)], greedy, use_tqdm=False)
        assert [r.choices[0].text for r in results] == [e.outputs[0].text for e in expected]
        values = scrape(background.base_url)
        assert values["octavo_num_preemptions_total"] >= 1
        assert_all_blocks_free(background.base_url)
    finally:
        background.stop()


def chat_body(i: int, stream: bool, max_tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"w{i % 90} w3"}],
            "max_completion_tokens": max_tokens, "ignore_eos": True, "temperature": 0.8,
            "seed": i, "stream": stream}


async def streamed_chat(http: httpx.AsyncClient, url: str, i: int, drop: bool):
    """``("answered", finish reasons)``, ``("dropped", None)`` after four chunks when
    ``drop``, or ``("rejected", response)``."""
    async with http.stream("POST", url, json=chat_body(i, True, 200 if drop else 8 + i % 9)
                           ) as response:
        if response.status_code != 200:
            await response.aread()
            return ("rejected", response)
        finishes, chunks = [], 0
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunks += 1
            if drop and chunks == 4:
                return ("dropped", None)  # leaving the block closes the connection
            finish = json.loads(line[len("data: "):])["choices"][0]["finish_reason"]
            finishes += [finish] if finish else []
        return ("answered", finishes)


async def plain_chat(http: httpx.AsyncClient, url: str, i: int):
    response = await http.post(url, json=chat_body(i, False, 8 + i % 9))
    if response.status_code != 200:
        return ("rejected", response)
    return ("answered", [c["finish_reason"] for c in response.json()["choices"]])


@pytest.mark.slow
def test_128_chat_requests_with_16_dropped_streams_are_all_answered_or_rejected(tiny_folder):
    """64 streaming and 64 plain chat requests at once, 16 of the streams dropped after a few
    chunks (or refused before they start), on a server that runs 16 sequences and lets 64 wait: each request is answered
    (or refused with 503 and Retry-After), the finish counters equal the answers, and the
    server ends idle with every block free."""
    background = start_server(tiny_model(tiny_folder, max_waiting_requests=64, max_num_seqs=16))
    url = f"{background.url}/chat/completions"

    async def main():
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=300, limits=limits) as http:
            return await asyncio.gather(
                *(streamed_chat(http, url, i, drop=i % 4 == 0) for i in range(64)),
                *(plain_chat(http, url, 64 + i) for i in range(64)))

    try:
        before = scrape(background.base_url)
        results = asyncio.run(main())
        values = wait_until_idle(background.base_url, timeout=60)
        kinds = [kind for kind, _ in results]
        # a stream meant to be dropped may be refused first (the queue holds 64 of 128)
        drop_kinds = kinds[0:64:4]
        dropped = drop_kinds.count("dropped")
        assert dropped + drop_kinds.count("rejected") == 16 and dropped >= 1
        assert kinds.count("dropped") == dropped
        assert kinds.count("answered") + kinds.count("rejected") == 128 - dropped
        for response in (detail for kind, detail in results if kind == "rejected"):
            assert response.status_code == 503, response.text  # cleanly: 503 queue_full
            assert response.json()["error"]["code"] == "queue_full"
            assert response.headers["retry-after"] == "1"
        answered = [finish for kind, finishes in results if kind == "answered"
                    for finish in finishes]
        assert answered and set(answered) == {"length"}

        def moved(name):
            return values[name] - before.get(name, 0)

        assert moved("octavo_request_success_total[length]") == len(answered)
        assert moved("octavo_request_success_total[abort]") == dropped
        assert moved("octavo_request_success_total[stop]") == 0
        assert_all_blocks_free(background.base_url)
    finally:
        background.stop()
