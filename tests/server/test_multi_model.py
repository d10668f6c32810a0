"""Several models behind one server: routing, lazy loads, eviction, hot swap, admin routes.

Two different tiny checkpoints (a Llama and a GPT-2, random weights from transformers
configs) and a second Llama for swaps; every greedy answer is checked against HF
transformers run on the same checkpoint.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import warnings
import weakref
from pathlib import Path

import httpx
import pytest
import torch
import transformers
from prometheus_client.parser import text_string_to_metric_families

from octavo import AsyncLLM
from octavo.entrypoints.model_manager import ModelSpec
from octavo.entrypoints.model_memory import engine_tensor_bytes
from octavo.testing.tiny_models import save_tiny_model, save_word_tokenizer
from octavo_server.background import BackgroundServer
from octavo_server.models import ModelManager
from octavo_server.settings import ServerSettings

from .conftest import assert_error, post, scrape

ENGINE = dict(device="cpu", block_size=4, num_gpu_blocks_override=512, max_num_seqs=64,
              dtype="float32")
CONTEXT = 1024
VOCAB = 103  # the word tokenizer's 3 special tokens and 100 words: every id has a word
KEY = "admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def save_tiny_gpt2(folder) -> None:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                     n_positions=CONTEXT, bos_token_id=1, eos_token_id=2,
                                     initializer_range=0.3, architectures=["GPT2LMHeadModel"])
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(folder)
    save_word_tokenizer(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("multi-model")
    paths = {name: root / name for name in ("llama", "gpt2", "llama-v2")}
    save_tiny_model(paths["llama"], "llama", seed=0, vocab_size=VOCAB,
                    max_position_embeddings=CONTEXT, initializer_range=0.3)
    save_tiny_gpt2(paths["gpt2"])
    save_tiny_model(paths["llama-v2"], "llama", seed=1, vocab_size=VOCAB,
                    max_position_embeddings=CONTEXT, initializer_range=0.3)
    return {name: str(path) for name, path in paths.items()}


class HFGreedy:
    """HF transformers' greedy tokens for a checkpoint (cached per prompt and length)."""

    def __init__(self, folder: str) -> None:
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self._cache: dict[tuple[str, int], list[int]] = {}

    def tokens(self, prompt: str, max_tokens: int) -> list[int]:
        key = (prompt, max_tokens)
        if key not in self._cache:
            ids = list(self.tokenizer(prompt).input_ids)
            with torch.no_grad():
                for _ in range(max_tokens):
                    ids.append(int(self.model(torch.tensor([ids])).logits[0, -1].argmax()))
            self._cache[key] = ids[-max_tokens:]
        return self._cache[key]

    def words(self, prompt: str, max_tokens: int) -> list[str]:
        """The text the server sends for those tokens, as words (special tokens are not
        shown; the rest map one token to one word)."""
        return [self.tokenizer.convert_ids_to_tokens(t)
                for t in self.tokens(prompt, max_tokens) if t >= 3]


@pytest.fixture(scope="module")
def hf(folders) -> dict[str, HFGreedy]:
    return {name: HFGreedy(path) for name, path in folders.items()}


@pytest.fixture(scope="module")
def engine_bytes(folders) -> dict[str, int]:
    """Each checkpoint's measured engine size under ENGINE."""
    return {name: engine_tensor_bytes(AsyncLLM(path, **ENGINE)) for name, path in folders.items()}


def spec(folders, name: str, **kwargs) -> ModelSpec:
    return ModelSpec(name, folders[name], dict(ENGINE), **kwargs)


def start(*specs: ModelSpec, budget_bytes: int | None = None, idle_unload_s=None,
          **settings) -> BackgroundServer:
    manager = ModelManager(specs=list(specs), memory_budget_gib=None if budget_bytes is None
                           else budget_bytes / (1 << 30), idle_unload_s=idle_unload_s)
    return BackgroundServer(manager, ServerSettings(**settings)).start()


def complete(server, model: str, prompt: str, max_tokens: int = 12,
             headers=None) -> httpx.Response:
    return post(server.base_url, "/v1/completions",
                {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                 "ignore_eos": True}, headers)


def assert_hf_exact(response: httpx.Response, hf_model: HFGreedy, prompt: str,
                    max_tokens: int = 12) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == max_tokens
    assert body["choices"][0]["text"].split() == hf_model.words(prompt, max_tokens)


def states(server, headers=None) -> dict[str, str]:
    models = httpx.get(f"{server.url}/models", headers=headers).json()["data"]
    return {m["id"]: m["state"] for m in models}


def num_loads(server, name: str) -> float:
    return scrape(server.base_url, name)["octavo_model_loads_total"]


def unloads(server, name: str) -> dict[str, float]:
    """``octavo_model_unloads_total`` of one model, by reason."""
    text = httpx.get(f"{server.base_url}/metrics").text
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == "octavo_model_unloads_total"
            and sample.labels["model_name"] == name}


PROMPTS = ["w1 w2 w3", "w7 w8", "w20 w5 w9 w11", "w42"]


def test_two_models_interleaved_and_concurrent_requests_get_their_own_tokens(folders, hf):
    for prompt in PROMPTS[:2]:  # the two models really differ
        assert hf["llama"].words(prompt, 12) != hf["gpt2"].words(prompt, 12)
    server = start(spec(folders, "llama"), spec(folders, "gpt2"))
    try:
        assert states(server) == {"llama": "unloaded", "gpt2": "unloaded"}
        for prompt in PROMPTS:  # interleaved
            for name in ("llama", "gpt2"):
                assert_hf_exact(complete(server, name, prompt), hf[name], prompt)
        assert states(server) == {"llama": "loaded", "gpt2": "loaded"}

        async def concurrent():
            async with httpx.AsyncClient(timeout=60) as client:
                jobs = [(name, prompt) for prompt in PROMPTS for name in ("llama", "gpt2")] * 2
                responses = await asyncio.gather(*(client.post(
                    f"{server.url}/completions", json={
                        "model": name, "prompt": prompt, "max_tokens": 12, "temperature": 0,
                        "ignore_eos": True}) for name, prompt in jobs))
                return list(zip(jobs, responses))

        for (name, prompt), response in asyncio.run(concurrent()):
            assert_hf_exact(response, hf[name], prompt)
        assert num_loads(server, "llama") == num_loads(server, "gpt2") == 1
    finally:
        server.stop()


def test_lazy_load_happens_once_for_8_concurrent_first_requests(folders, hf):
    server = start(spec(folders, "llama"), spec(folders, "gpt2"))
    try:
        assert num_loads(server, "llama") == 0
        names = ["llama"] * 8 + ["gpt2"] * 2  # and two first requests to another model

        async def first_requests():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(client.post(f"{server.url}/completions", json={
                    "model": name, "prompt": PROMPTS[0], "max_tokens": 12,
                    "temperature": 0, "ignore_eos": True}) for name in names))

        for name, response in zip(names, asyncio.run(first_requests())):
            assert_hf_exact(response, hf[name], PROMPTS[0])
        assert num_loads(server, "llama") == 1
        assert num_loads(server, "gpt2") == 1  # loaded beside llama, at the same time
        assert_hf_exact(complete(server, "llama", PROMPTS[1]), hf["llama"], PROMPTS[1])
        assert num_loads(server, "llama") == 1
        metrics = scrape(server.base_url, "llama")
        assert metrics["octavo_model_load_seconds_count"] == 1
        assert metrics["octavo_model_memory_bytes"] > 0
    finally:
        server.stop()


def test_a_budget_for_one_model_evicts_and_reloads_but_never_in_flight_or_pinned(
        folders, hf, engine_bytes):
    budget = int(1.5 * max(engine_bytes["llama"], engine_bytes["gpt2"]))
    server = start(spec(folders, "llama"), spec(folders, "gpt2"), budget_bytes=budget)
    try:
        for name in ("llama", "gpt2", "llama", "gpt2"):
            assert_hf_exact(complete(server, name, PROMPTS[0]), hf[name], PROMPTS[0])
            other = "gpt2" if name == "llama" else "llama"
            assert states(server) == {name: "loaded", other: "unloaded"}
        assert num_loads(server, "llama") == num_loads(server, "gpt2") == 2
        assert unloads(server, "llama") == {"evicted": 2}

        # gpt2 is loaded; a long stream holds it while llama is asked for
        with httpx.stream("POST", f"{server.url}/completions", timeout=60, json={
                "model": "gpt2", "prompt": PROMPTS[1], "max_tokens": 900, "temperature": 0,
                "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            refused = complete(server, "llama", PROMPTS[0])
            assert_error(refused, 503, None, "requests in flight")
            assert refused.json()["error"]["code"] == "insufficient_memory"
            assert refused.headers["retry-after"] == "1"
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["usage"]["completion_tokens"] == 900  # all of it
        assert_hf_exact(complete(server, "llama", PROMPTS[0]), hf["llama"], PROMPTS[0])

        pinned = post(server.base_url, "/admin/models/llama/pin", {})
        assert pinned.status_code == 200 and pinned.json()["pinned"] is True
        assert_error(complete(server, "gpt2", PROMPTS[0]), 503, None, "pinned")
        assert states(server) == {"llama": "loaded", "gpt2": "unloaded"}
        post(server.base_url, "/admin/models/llama/unpin", {})
        assert_hf_exact(complete(server, "gpt2", PROMPTS[0]), hf["gpt2"], PROMPTS[0])
        assert states(server) == {"llama": "unloaded", "gpt2": "loaded"}
    finally:
        server.stop()


def live_tensor_bytes() -> int:
    gc.collect()
    storages = {}
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module attributes
        warnings.simplefilter("ignore", FutureWarning)
        objects = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in objects:
        if not obj.is_meta:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_hot_swap_during_32_streams(folders, hf, engine_bytes):
    server = start(spec(folders, "llama"))
    max_tokens = 200  # long enough that the swap's load ends while they stream
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(32)]
    try:
        assert_hf_exact(complete(server, "llama", PROMPTS[0]), hf["llama"], PROMPTS[0])
        managed = server.app.state.octavo.manager.engines.get("llama")
        old_engine = weakref.ref(managed.engine.llm.engine)
        before = live_tensor_bytes()

        async def streams_and_swap():
            async with httpx.AsyncClient(timeout=120) as client:
                started = asyncio.Semaphore(0)

                async def stream(prompt: str) -> list[str]:
                    chunks = []
                    async with client.stream("POST", f"{server.url}/completions", json={
                            "model": "llama", "prompt": prompt, "max_tokens": max_tokens,
                            "temperature": 0, "ignore_eos": True, "stream": True}) as response:
                        async for line in response.aiter_lines():
                            if line.startswith("data: "):
                                chunks.append(line[6:])
                                if len(chunks) == 1:
                                    started.release()
                    return chunks

                tasks = [asyncio.create_task(stream(p)) for p in prompts]
                for _ in prompts:
                    await started.acquire()
                swap = await client.post(f"{server.base_url}/admin/models/llama/swap",
                                         json={"path": folders["llama-v2"]})
                unfinished = sum(not t.done() for t in tasks)
                return swap, unfinished, await asyncio.gather(*tasks)

        swap, unfinished, results = asyncio.run(streams_and_swap())
        assert swap.status_code == 200, swap.text
        assert swap.json()["root"] == folders["llama-v2"] and swap.json()["state"] == "loaded"
        assert unfinished > 0  # the swap finished while streams were still running
        for prompt, chunks in zip(prompts, results):
            assert chunks[-1] == "[DONE]"
            text = "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1]
                           if json.loads(c)["choices"])
            assert text.split() == hf["llama"].words(prompt, max_tokens)
        after_swap = complete(server, "llama", PROMPTS[0])
        assert hf["llama-v2"].words(PROMPTS[0], 12) != hf["llama"].words(PROMPTS[0], 12)
        assert_hf_exact(after_swap, hf["llama-v2"], PROMPTS[0])

        deadline = time.monotonic() + 10
        while old_engine() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
            gc.collect()
        assert old_engine() is None  # shut down and garbage
        after = live_tensor_bytes()
        # v2 replaced v1: the tensors alive did not grow by a second engine
        assert after < before + engine_bytes["llama-v2"] // 2, (before, after)
        metrics = scrape(server.base_url, "llama")
        assert metrics["octavo_model_swaps_total"] == 1
        assert metrics["octavo_model_swap_seconds_count"] == 1
    finally:
        server.stop()


def test_bad_input_unknown_models_bad_swaps_and_admin_without_key(folders, hf, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((Path(folders["llama"]) / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    server = start(spec(folders, "llama", aliases=("default",)), spec(folders, "gpt2"),
                   api_key=KEY)
    try:
        unknown = complete(server, "nope", PROMPTS[0], headers=AUTH)
        error = assert_error(unknown, 404, "model", "'nope' does not exist")
        assert error["code"] == "model_not_found"
        assert "['default', 'gpt2', 'llama']" in error["message"]
        assert_hf_exact(complete(server, "default", PROMPTS[0], headers=AUTH), hf["llama"],
                        PROMPTS[0])

        for path in (str(tmp_path / "missing"), str(broken)):
            response = post(server.base_url, "/admin/models/llama/swap", {"path": path}, AUTH)
            error = assert_error(response, 400, "path", "could not be loaded")
            assert error["code"] == "model_load_failed"
            assert_hf_exact(complete(server, "llama", PROMPTS[0], headers=AUTH), hf["llama"],
                            PROMPTS[0])
        card = httpx.get(f"{server.url}/models/default", headers=AUTH).json()
        assert card["id"] == "llama" and card["root"] == folders["llama"]
        assert card["aliases"] == ["default"] and card["max_model_len"] == CONTEXT

        for action in ("load", "unload", "pin", "unpin"):
            assert_error(post(server.base_url, f"/admin/models/gpt2/{action}", {}), 401, None,
                         "")
        assert_error(post(server.base_url, "/admin/models/gpt2/swap",
                          {"path": folders["llama"]}), 401, None, "")
        assert_error(post(server.base_url, "/admin/models/nope/load", {}, AUTH), 404, "model",
                     "does not exist")
        assert_error(post(server.base_url, "/admin/models/llama/swap", {}, AUTH), 400, "path",
                     "")
        loaded = post(server.base_url, "/admin/models/gpt2/load", {}, AUTH)
        assert loaded.status_code == 200 and loaded.json()["state"] == "loaded"
        assert post(server.base_url, "/admin/models/gpt2/pin", {}, AUTH).status_code == 200
        assert_error(post(server.base_url, "/admin/models/gpt2/unload", {}, AUTH), 409,
                     "model", "pinned")
        post(server.base_url, "/admin/models/gpt2/unpin", {}, AUTH)
        unloaded = post(server.base_url, "/admin/models/gpt2/unload", {}, AUTH)
        assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
        assert states(server, AUTH) == {"llama": "loaded", "gpt2": "unloaded"}
        assert unloads(server, "gpt2") == {"asked": 1}
    finally:
        server.stop()


def test_an_idle_model_is_unloaded_and_loads_again_on_its_next_request(folders, hf):
    server = start(spec(folders, "llama"), spec(folders, "gpt2", pinned=True),
                   idle_unload_s=0.5)
    try:
        for name in ("llama", "gpt2"):
            assert_hf_exact(complete(server, name, PROMPTS[0]), hf[name], PROMPTS[0])
        deadline = time.monotonic() + 10
        while states(server)["llama"] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert states(server) == {"llama": "unloaded", "gpt2": "loaded"}  # pinned stays
        assert unloads(server, "llama") == {"idle": 1}
        assert_hf_exact(complete(server, "llama", PROMPTS[1]), hf["llama"], PROMPTS[1])
        assert num_loads(server, "llama") == 2
    finally:
        server.stop()
