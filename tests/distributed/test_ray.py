"""Tensor parallelism over Ray actors (gloo on the CPU): the same tokens as one rank and HF,
and a killed actor (``test_ray_cluster.py``: two nodes). Starting Ray takes tens
of seconds here, hence ``slow``; the tests need ``octavo-core[ray]``."""

from __future__ import annotations

import os
import signal
import time

import pytest

from octavo.engine.executor import EngineDeadError

from .conftest import GREEDY, hf_tokens, make_llm, prompts, token_ids, wait_gone

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

TP2_RAY = dict(tensor_parallel_size=2, distributed_executor_backend="ray")


@pytest.fixture(scope="module")
def local_ray():
    # address="local": a Ray of its own, never another session's cluster on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_ray_ranks_match_one_rank_and_hf_under_preemption(request, local_ray, model):
    folder, hf_model = request.getfixturevalue(model)
    batch = prompts([9, 13, 17, 11], seed=2)
    small = dict(num_gpu_blocks_override=12, enable_prefix_caching=False)
    one = token_ids(make_llm(folder, **small).generate(batch, GREEDY))
    llm = make_llm(folder, **TP2_RAY, **small)
    try:
        outputs = llm.generate(batch, GREEDY)
        assert token_ids(outputs) == one == hf_tokens(hf_model, batch)
        assert sum(out.metrics.num_preemptions for out in outputs) > 0
    finally:
        llm.engine.shutdown()


def test_a_killed_actor_stops_the_engine_within_seconds(local_ray, llama):
    folder, _ = llama
    llm = make_llm(folder, **TP2_RAY)
    pids = llm.engine.core.runner.worker_pids()
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(EngineDeadError, match="rank 1 .*died"):
        llm.generate(prompts([5, 6]), GREEDY)
    assert time.monotonic() - start < 15
    assert wait_gone(pids) == []
