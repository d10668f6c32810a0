"""Seeded synthetic workloads."""

from __future__ import annotations

import pytest

from octavo_bench.workload import (
    CHAT_INPUT_RANGE,
    CHAT_OUTPUT_RANGE,
    make_workload,
    workload_totals,
)


def test_random_workload_has_the_set_lengths_and_avoids_special_tokens():
    requests = make_workload("random", 20, vocab_size=50, seed=1, input_len=7, output_len=5,
                             exclude_token_ids=[0, 1, 2])
    assert all(r.prompt_len == 7 and r.output_len == 5 for r in requests)
    assert all(3 <= t < 50 for r in requests for t in r.prompt_token_ids)
    assert workload_totals(requests) == {"num_requests": 20, "prompt_tokens": 140,
                                         "output_tokens": 100, "total_tokens": 240}


def test_chat_mix_draws_lengths_in_range_from_a_fixed_seed():
    requests = make_workload("chat", 256, vocab_size=1000, seed=0)
    assert requests == make_workload("chat", 256, vocab_size=1000, seed=0)
    assert requests != make_workload("chat", 256, vocab_size=1000, seed=1)
    inputs = [r.prompt_len for r in requests]
    outputs = [r.output_len for r in requests]
    assert CHAT_INPUT_RANGE[0] <= min(inputs) and max(inputs) <= CHAT_INPUT_RANGE[1]
    assert CHAT_OUTPUT_RANGE[0] <= min(outputs) and max(outputs) <= CHAT_OUTPUT_RANGE[1]
    assert len(set(inputs)) > 100 and len(set(outputs)) > 100  # really a mix
    # a prefix of a larger workload is the smaller workload: runs of different sizes compare
    assert make_workload("chat", 16, vocab_size=1000, seed=0) == requests[:16]


@pytest.mark.parametrize("args, kwargs, message", [
    (("poem", 2, 10), {}, "unknown workload 'poem'"),
    (("random", 0, 10), {}, "num_requests must be positive"),
    (("random", 2, 10), dict(output_len=-1), "output_len must be positive"),
    (("random", 2, 10), dict(exclude_token_ids=range(10)), "no token ids left"),
])
def test_bad_workloads_are_refused_by_name(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_workload(*args, **kwargs)
