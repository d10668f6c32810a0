"""Tiny random checkpoints and helpers shared by the tensor-parallel tests.

The engines here run on the CPU in float32: ``dtype="auto"`` would time bf16 products in
every worker at start-up.
"""

from __future__ import annotations

import time

import pytest

from octavo import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
ENGINE = dict(device="cpu", dtype="float32", block_size=4, num_gpu_blocks_override=256)


def tiny(tmp_path_factory, name: str, arch: str, **overrides):
    from octavo.testing.tiny_models import save_tiny_model

    folder = tmp_path_factory.mktemp(name)
    return folder, save_tiny_model(folder, arch, **overrides)


@pytest.fixture(scope="session")
def llama(tmp_path_factory):
    """4 attention heads, 2 KV heads (GQA): each of 2 ranks holds one KV head."""
    return tiny(tmp_path_factory, "llama", "llama")


@pytest.fixture(scope="session")
def mqa(tmp_path_factory):
    """4 attention heads, 1 KV head (MQA): 2 ranks each hold a replica of it."""
    return tiny(tmp_path_factory, "mqa", "llama", num_key_value_heads=1)


@pytest.fixture(scope="session")
def qwen2(tmp_path_factory):
    """A family with biases (on q, k and v)."""
    return tiny(tmp_path_factory, "qwen2", "qwen2")


@pytest.fixture(scope="session")
def three_kv_heads(tmp_path_factory):
    """6 attention heads over 3 KV heads: 2 ranks can neither split nor replicate them."""
    return tiny(tmp_path_factory, "kv3", "llama", hidden_size=96, num_attention_heads=6,
                num_key_value_heads=3)


def make_llm(folder, **options) -> LLM:
    return LLM(str(folder), **{**ENGINE, **options})


def token_ids(outputs) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in outputs]


def prompts(lengths, seed=0, vocab=100):
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def hf_tokens(hf_model, prompt_list, steps=GREEDY.max_tokens):
    from octavo.testing.model_suite import hf_greedy

    return [hf_greedy(hf_model, p, steps) for p in prompt_list]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie not yet reaped counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, timeout=15.0) -> list[int]:
    """The pids still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if pid_alive(pid)]


