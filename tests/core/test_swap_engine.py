"""Swap preemption and the prefix tier end to end on a tiny random Llama: a tiny device pool
that keeps preempting gives exactly the greedy tokens (and the seeded samples) of a pool large
enough to never preempt, for each attention backend; an evicted conversation resumes from the
tier with the tokens it would have had; a disk tier works and a tier that cannot be set up
leaves recompute working with a warning."""

from __future__ import annotations

import logging
import os

import pytest

from octavo import LLM, SamplingParams
from octavo.testing.tiny_models import save_tiny_model

BS = 4
TIER_GIB = 256 * 2048 / 2**30  # 256 blocks of this model (2 layers x K,V x 4 x 2 x 16 x 4 B)
SHARED = list(range(3, 15))  # a 12-token prefix every other prompt starts with


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny_model(path, "llama")
    return str(path)


def workload(num_prompts: int):
    prompts = [SHARED + [20 + i, 30 + i % 5] * (1 + i % 3) if i % 2 else
               [40 + i] * 3 + list(range(50, 50 + 2 * i)) for i in range(num_prompts)]
    params = [SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)
              for _ in range(num_prompts)]
    params[1] = SamplingParams(n=3, temperature=0, max_tokens=10, ignore_eos=True)
    params[2] = SamplingParams(n=2, temperature=0.9, seed=7, max_tokens=10, ignore_eos=True)
    return prompts, params


def run(llm: LLM, prompts, params):
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [[c.token_ids for c in out.outputs] for out in outputs]


def make_llm(folder, backend, num_blocks, **kwargs):
    return LLM(folder, device="cpu", block_size=BS, num_gpu_blocks_override=num_blocks,
               attention_backend=backend, max_num_seqs=16, max_num_batched_tokens=64, **kwargs)


@pytest.mark.parametrize("backend, num_prompts", [
    ("torch", 10), ("cpu", 10),
    pytest.param("triton", 4, marks=pytest.mark.slow),  # interpreted: about a minute
])
def test_swap_preemption_matches_a_large_pool(folder, backend, num_prompts):
    prompts, params = workload(num_prompts)
    reference = run(make_llm(folder, backend, 512), prompts, params)
    small = make_llm(folder, backend, 16, swap_space_gib=TIER_GIB, preemption_mode="swap")
    assert run(small, prompts, params) == reference
    stats = small.engine.stats()
    assert stats.num_preemptions_swap > 0 and stats.num_preemptions_recompute == 0
    assert stats.swap.blocks_swapped_out > 0 and stats.swap.blocks_swapped_in > 0
    assert stats.num_swapped == 0 and stats.swap.num_free_tier_blocks == stats.swap.num_tier_blocks
    assert stats.num_free_kv_blocks == 16


def test_recompute_and_auto_modes_match_too(folder):
    prompts, params = workload(8)
    reference = run(make_llm(folder, "torch", 512), prompts, params)
    for mode in ("recompute", "auto"):
        llm = make_llm(folder, "torch", 16, swap_space_gib=TIER_GIB, preemption_mode=mode)
        assert run(llm, prompts, params) == reference
        stats = llm.engine.stats()
        assert stats.num_preemptions_swap + stats.num_preemptions_recompute > 0
        if mode == "recompute":
            assert stats.num_preemptions_swap == 0


def conversation_turns(llm: LLM, turns: int = 3):
    """Three conversations, turn by turn; each turn's prompt is the whole conversation."""
    history = {c: [3 + c] + list(range(10 + 7 * c, 26 + 7 * c)) for c in range(3)}
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    answers = []
    for turn in range(turns):
        for c, tokens in history.items():
            (out,) = llm.generate([tokens], params, use_tqdm=False)
            answers.append((out.outputs[0].token_ids, out.metrics.num_cached_tokens))
            history[c] = tokens + out.outputs[0].token_ids + [60 + turn, 61 + c]
    return answers


def test_evicted_conversations_resume_from_the_tier(folder):
    reference = conversation_turns(make_llm(folder, "torch", 512))
    llm = make_llm(folder, "torch", 12, swap_space_gib=TIER_GIB)
    answers = conversation_turns(llm)
    assert [a for a, _ in answers] == [a for a, _ in reference]
    stats = llm.engine.stats().swap
    assert stats.prefix_blocks_offloaded > 0 and stats.tier_prefix_hits > 0
    # Later turns find their earlier turns' blocks (in the tier: the pool holds 12 blocks).
    assert all(cached >= 16 for _, cached in answers[3:])
    without = conversation_turns(make_llm(folder, "torch", 12))
    assert [a for a, _ in without] == [a for a, _ in reference]
    assert sum(c for _, c in answers) > sum(c for _, c in without)


def test_disk_tier_resumes_conversations(folder, tmp_path):
    llm = make_llm(folder, "torch", 12, swap_space_gib=TIER_GIB, kv_offload="disk",
                   kv_offload_dir=str(tmp_path / "kv"))
    reference = conversation_turns(make_llm(folder, "torch", 512))
    answers = conversation_turns(llm)
    assert [a for a, _ in answers] == [a for a, _ in reference]
    assert llm.engine.stats().swap.tier_prefix_hits > 0
    assert os.listdir(tmp_path / "kv") == []


def test_an_unusable_disk_tier_warns_and_recomputes(folder, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    prompts, params = workload(6)
    reference = run(make_llm(folder, "torch", 512), prompts, params)
    with caplog.at_level(logging.WARNING, logger="octavo"):
        llm = make_llm(folder, "torch", 16, swap_space_gib=TIER_GIB, kv_offload="disk",
                       kv_offload_dir=str(blocker / "kv"), preemption_mode="swap")
    assert "no swap tier, preempted requests are recomputed" in caplog.text
    assert "disk tier under" in caplog.text
    assert run(llm, prompts, params) == reference
    stats = llm.engine.stats()
    assert stats.num_preemptions_recompute > 0 and stats.swap.num_tier_blocks == 0


def test_a_tiny_tier_fills_and_recompute_takes_over(folder, caplog):
    prompts, params = workload(8)
    reference = run(make_llm(folder, "torch", 512), prompts, params)
    llm = make_llm(folder, "torch", 16, swap_space_gib=2 * 2048 / 2**30, preemption_mode="swap")
    with caplog.at_level(logging.WARNING, logger="octavo"):
        assert run(llm, prompts, params) == reference
    stats = llm.engine.stats()
    assert stats.num_preemptions_recompute > 0
    assert "swap tier full" in caplog.text


def test_swap_options_are_validated():
    with pytest.raises(ValueError, match="preemption_mode"):
        LLM("unused", preemption_mode="sometimes")
    with pytest.raises(ValueError, match="swap_space_gib"):
        LLM("unused", swap_space_gib=-1)


def test_swap_options_reach_the_cli_and_the_environment(monkeypatch):
    from click.testing import CliRunner

    from octavo.cli import cli
    from octavo.config import CacheSettings, SchedulerSettings

    result = CliRunner().invoke(cli, ["generate", "--help"])
    for flag in ("--swap-space-gib", "--kv-offload", "--kv-offload-dir", "--preemption-mode"):
        assert flag in result.output
    monkeypatch.setenv("OCTAVO_PREEMPTION_MODE", "SWAP")
    monkeypatch.setenv("OCTAVO_SWAP_SPACE_GIB", "1.5")
    monkeypatch.setenv("OCTAVO_KV_OFFLOAD", "disk")
    assert SchedulerSettings().preemption_mode == "swap"
    assert (CacheSettings().swap_space_gib, CacheSettings().kv_offload) == (1.5, "disk")
