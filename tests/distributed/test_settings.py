"""Tensor-parallel settings and the errors that come before any worker starts (fast)."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from octavo.config import ParallelSettings
from octavo.entrypoints.llm import engine_config_from_kwargs

from .conftest import make_llm


def test_defaults_pick_uni_for_one_rank_and_mp_for_more():
    assert ParallelSettings().executor_backend == "uni"
    assert ParallelSettings(tensor_parallel_size=2).executor_backend == "mp"
    assert ParallelSettings(tensor_parallel_size=2,
                            distributed_executor_backend="ray").executor_backend == "ray"


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("OCTAVO_TENSOR_PARALLEL_SIZE", "2")
    monkeypatch.setenv("OCTAVO_DISTRIBUTED_EXECUTOR_BACKEND", "ray")
    settings = ParallelSettings()
    assert (settings.tensor_parallel_size, settings.executor_backend) == (2, "ray")


def test_llm_keywords_reach_the_parallel_settings():
    config = engine_config_from_kwargs("m", tensor_parallel_size=2,
                                       distributed_executor_backend="mp")
    assert config.parallel.tensor_parallel_size == 2


@pytest.mark.parametrize("options, message", [
    (dict(tensor_parallel_size=2, distributed_executor_backend="uni"), "'uni' runs one rank"),
    (dict(distributed_executor_backend="mpi"), "Input should be 'uni', 'mp' or 'ray'"),
    (dict(tensor_parallel_size=0), "greater than or equal to 1"),
])
def test_bad_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ParallelSettings(**options)


def test_cli_has_the_flags_and_refuses_an_unknown_backend_in_one_line():
    from octavo.commands import generate

    names = {opt: p.name for p in generate.params for opt in getattr(p, "opts", [])}
    assert names["-tp"] == names["--tensor-parallel-size"] == "tensor_parallel_size"
    assert names["--distributed-executor-backend"] == "distributed_executor_backend"
    result = CliRunner().invoke(generate, ["hi", "--distributed-executor-backend", "mpi"])
    assert result.exit_code == 2
    assert "'mpi' is not one of 'uni', 'mp', 'ray'" in result.output


def test_serve_has_the_flags():
    from octavo_server.cli import serve

    opts = {opt for p in serve.params for opt in getattr(p, "opts", [])}
    assert {"-tp", "--tensor-parallel-size", "--distributed-executor-backend"} <= opts


def test_kv_heads_that_two_ranks_cannot_share_are_refused_before_any_worker(three_kv_heads):
    folder, _ = three_kv_heads
    with pytest.raises(ValueError, match="tensor_parallel_size 2 and the model's 3 KV heads: "
                                         "one must divide the other") as info:
        make_llm(folder, tensor_parallel_size=2)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("tp", [3, 8])
def test_more_or_uneven_ranks_than_heads_are_refused(llama, tp):
    folder, _ = llama
    with pytest.raises(ValueError, match=f"tensor_parallel_size {tp} does not divide the "
                                         "model's 4 attention heads"):
        make_llm(folder, tensor_parallel_size=tp)


def test_ray_backend_without_ray_says_how_to_install_it(llama, monkeypatch):
    folder, _ = llama
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ValueError, match=r"pip install 'octavo-core\[ray\]'") as info:
        make_llm(folder, tensor_parallel_size=2, distributed_executor_backend="ray")
    assert "\n" not in str(info.value)


def test_one_rank_stays_in_this_process(llama):
    from octavo.engine.model_runner import ModelRunner

    folder, _ = llama
    llm = make_llm(folder)
    assert type(llm.engine.core.runner) is ModelRunner  # no worker, no extra copy
