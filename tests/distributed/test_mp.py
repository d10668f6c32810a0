"""Tensor parallelism over worker processes (``mp``, gloo on the CPU): greedy tokens equal one
rank's and HF's; a killed worker stops the engine within seconds and leaves no process.

Each engine spawns two processes that import torch and load a shard: tens of seconds on two
shared cores, hence ``slow``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from octavo import SamplingParams
from octavo.engine.executor import EngineDeadError

from .conftest import GREEDY, hf_tokens, make_llm, prompts, token_ids, wait_gone

pytestmark = pytest.mark.slow

TP2 = dict(tensor_parallel_size=2, distributed_executor_backend="mp")


@pytest.mark.parametrize("model", ["llama", "mqa", "qwen2"])
def test_two_ranks_match_one_rank_and_hf_in_a_mixed_batch(request, model):
    folder, hf_model = request.getfixturevalue(model)
    batch = prompts([3, 9, 17, 30])
    one = token_ids(make_llm(folder).generate(batch, GREEDY))
    llm = make_llm(folder, **TP2)
    try:
        assert token_ids(llm.generate(batch, GREEDY)) == one == hf_tokens(hf_model, batch)
        shared = [batch[3] + tail for tail in prompts([2, 5, 7], seed=1)]  # one cached prefix
        outputs = llm.generate(shared, GREEDY)
        assert token_ids(outputs) == hf_tokens(hf_model, shared)
        assert all(out.metrics.num_cached_tokens >= 28 for out in outputs)  # prefix caching across ranks
    finally:
        llm.engine.shutdown()


def test_preemption_with_few_blocks_keeps_tokens_equal(llama):
    folder, hf_model = llama
    batch = prompts([9, 13, 17, 11], seed=2)
    llm = make_llm(folder, **TP2, num_gpu_blocks_override=12, enable_prefix_caching=False)
    try:
        outputs = llm.generate(batch, SamplingParams(temperature=0, max_tokens=12,
                                                     ignore_eos=True))
        assert sum(out.metrics.num_preemptions for out in outputs) > 0
        assert token_ids(outputs) == hf_tokens(hf_model, batch, steps=12)
        seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=6, ignore_eos=True)
        one = make_llm(folder, num_gpu_blocks_override=12, enable_prefix_caching=False)
        assert token_ids(llm.generate(batch[:2], seeded)) == token_ids(
            one.generate(batch[:2], seeded))  # the driver samples: same generator, same tokens
    finally:
        llm.engine.shutdown()


def test_logprobs_and_prompt_logprobs_match_one_rank(qwen2):
    folder, _ = qwen2
    batch = prompts([6, 11], seed=3)
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=3, prompt_logprobs=2,
                            ignore_eos=True)
    one = make_llm(folder).generate(batch, params)
    llm = make_llm(folder, **TP2, max_num_batched_tokens=8)  # chunked prompts too
    try:
        two = llm.generate(batch, params)
    finally:
        llm.engine.shutdown()
    for a, b in zip(one, two):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for x, y in zip(a.outputs[0].logprobs + a.prompt_logprobs[1:],
                        b.outputs[0].logprobs + b.prompt_logprobs[1:]):
            assert x.keys() == y.keys()
            assert all(abs(x[t].logprob - y[t].logprob) < 1e-4 for t in x)


@pytest.mark.parametrize("kv_offload", ["host", "disk"])
def test_preemption_swaps_to_every_ranks_tier_and_keeps_tokens_equal(llama, tmp_path,
                                                                    kv_offload):
    folder, hf_model = llama
    batch = prompts([9, 13, 17, 11], seed=2)
    llm = make_llm(folder, **TP2, num_gpu_blocks_override=12, enable_prefix_caching=False,
                   swap_space_gib=256 * 1024 / 2**30, preemption_mode="swap",
                   kv_offload=kv_offload, kv_offload_dir=str(tmp_path))
    try:
        params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
        assert token_ids(llm.generate(batch, params)) == hf_tokens(hf_model, batch, steps=12)
        swap = llm.engine.stats().swap
        assert swap.blocks_swapped_out > 0 and swap.blocks_swapped_in > 0
    finally:
        llm.engine.shutdown()


def test_a_killed_worker_stops_the_engine_within_seconds_and_leaves_no_process(llama):
    folder, _ = llama
    llm = make_llm(folder, **TP2)
    executor = llm.engine.core.runner
    pids = executor.worker_pids()
    assert all(pid != os.getpid() for pid in pids)
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(EngineDeadError, match="rank 1 .* was killed by signal 9"):
        llm.generate(prompts([5, 6]), GREEDY)
    assert time.monotonic() - start < 10
    assert wait_gone(pids) == []
    with pytest.raises(EngineDeadError):  # and stays dead
        llm.generate(prompts([5]), GREEDY)


def test_shutdown_stops_every_worker_and_check_health_reports_a_dead_one(llama):
    folder, _ = llama
    llm = make_llm(folder, **TP2)
    executor = llm.engine.core.runner
    pids = executor.worker_pids()
    executor.check_health()
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    with pytest.raises(EngineDeadError, match="rank 0"):
        while time.monotonic() < deadline:  # the kernel takes the process down meanwhile
            executor.check_health()
            time.sleep(0.1)
    assert wait_gone(pids) == []
