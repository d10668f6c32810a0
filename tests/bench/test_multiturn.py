"""``octavo bench multiturn``: later turns of conversations whose prefixes were evicted, with
a swap tier against without."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from octavo import LLM
from octavo.cli import cli
from octavo.testing.tiny_models import save_tiny_model
from octavo_bench.multiturn import MultiTurnWorkload, default_pool_tokens, run_multiturn

WORKLOAD = MultiTurnWorkload(num_conversations=6, num_turns=3, first_len=40, user_len=8,
                             output_len=4, concurrency=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny_model(path, "llama", max_position_embeddings=512)
    return path


def engine(folder, **kwargs):
    blocks = -(-default_pool_tokens(WORKLOAD) // 4)
    return LLM(str(folder), device="cpu", block_size=4, num_gpu_blocks_override=blocks,
               **kwargs).engine


def test_later_turns_reuse_their_conversation_from_the_tier_only(folder):
    without = run_multiturn(engine(folder), WORKLOAD, vocab_size=100)
    tiered = engine(folder, swap_space_gib=0.01)
    with_tier = run_multiturn(tiered, WORKLOAD, vocab_size=100)
    assert with_tier.outputs == without.outputs and len(without.outputs) == 18
    assert all(len(answer) == 4 for answer in without.outputs)
    assert sorted(with_tier.ttft_s) == [1, 2, 3] and len(with_tier.ttft_s[3]) == 6
    # The pool holds two conversations: without a tier, a later turn finds almost nothing.
    for turn in (2, 3):
        assert with_tier.cached_tokens[turn] > 0.7 * with_tier.prompt_tokens[turn]  # full blocks
        assert without.cached_tokens[turn] < 0.2 * without.prompt_tokens[turn]
    assert tiered.stats().swap.tier_prefix_hits > 0


def test_workload_is_validated():
    with pytest.raises(ValueError, match="concurrency"):
        MultiTurnWorkload(concurrency=0)


def test_multiturn_command_compares_tiers(folder, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, [
        "bench", "multiturn", "-m", str(folder), "--device", "cpu", "--block-size", "4",
        "--conversations", "4", "--turns", "2", "--first-len", "24", "--user-len", "4",
        "--output-len", "3", "--concurrency", "2", "--tiers", "none,host,disk",
        "--tier-gib", "0.01", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["tier"] for r in report["results"]] == ["none", "host", "disk"]
    assert all(r["same_tokens_as_first"] for r in report["results"])
    assert report["results"][0]["swap"]["num_tier_blocks"] == 0
    assert report["results"][1]["swap"]["tier_prefix_hits"] > 0
    assert report["machine"]["cpu"]
    bad = CliRunner().invoke(cli, ["bench", "multiturn", "--tiers", "ram"])
    assert bad.exit_code == 2 and "--tiers" in bad.output
    bad = CliRunner().invoke(cli, ["bench", "multiturn", "--preemption-modes", "never"])
    assert bad.exit_code == 2 and "--preemption-modes" in bad.output


def test_multiturn_command_compares_preemption_modes_under_pressure(folder, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, [
        "bench", "multiturn", "-m", str(folder), "--device", "cpu", "--block-size", "4",
        "--num-gpu-blocks-override", "14", "--conversations", "4", "--turns", "2",
        "--first-len", "24", "--user-len", "4", "--output-len", "6", "--concurrency", "4",
        "--tiers", "host", "--preemption-modes", "swap,recompute", "--tier-gib", "0.01",
        "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    swap, recompute = json.loads(out.read_text())["results"]
    assert (swap["preemption_mode"], recompute["preemption_mode"]) == ("swap", "recompute")
    assert swap["preemptions_swap"] > 0 and swap["preemptions_recompute"] == 0
    assert recompute["preemptions_recompute"] > 0 and recompute["preemptions_swap"] == 0
    assert recompute["same_tokens_as_first"]
