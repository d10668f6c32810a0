"""A Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``, 1 CPU each):
``STRICT_SPREAD`` places one rank on each node and the tokens equal HF's. In a module of its
own: it connects to that cluster, not to the local Ray of ``test_ray.py``. Slow; needs
``octavo-core[ray]``."""

from __future__ import annotations

import pytest

from .conftest import GREEDY, hf_tokens, make_llm, prompts, token_ids, wait_gone

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

TP2_RAY = dict(tensor_parallel_size=2, distributed_executor_backend="ray")


def test_two_node_cluster_places_one_rank_on_each_node(llama):
    from ray.cluster_utils import Cluster

    folder, hf_model = llama
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, resources={"node_a": 1}, include_dashboard=False))
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        llm = make_llm(folder, **TP2_RAY, ray_placement_strategy="STRICT_SPREAD")
        executor = llm.engine.core.runner
        node_ids = executor.node_ids()
        assert len(set(node_ids)) == 2
        assert {n["NodeID"] for n in ray.nodes() if n["Alive"]} == set(node_ids)
        batch = prompts([3, 9, 17])
        assert token_ids(llm.generate(batch, GREEDY)) == hf_tokens(hf_model, batch)
        pids = executor.worker_pids()
        llm.engine.shutdown()
        assert wait_gone(pids) == []
    finally:
        ray.shutdown()
        cluster.shutdown()
