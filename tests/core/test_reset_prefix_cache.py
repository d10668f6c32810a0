"""``LLM.reset_prefix_cache``: later requests compute their whole prompts again."""

from __future__ import annotations

import pytest

from octavo import LLM, SamplingParams
from octavo.testing.tiny_models import save_tiny_model

GREEDY = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
PROMPT = list(range(3, 24))  # 21 tokens: 5 full blocks of 4


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    save_tiny_model(folder, "llama")
    return LLM(str(folder), device="cpu", block_size=4, num_gpu_blocks_override=64)


def test_reset_prefix_cache_forgets_cached_prompts(llm):
    (first,) = llm.generate([PROMPT], GREEDY)
    (hit,) = llm.generate([PROMPT], GREEDY)
    assert hit.metrics.num_cached_tokens == 20
    llm.reset_prefix_cache()
    (again,) = llm.generate([PROMPT], GREEDY)
    assert again.metrics.num_cached_tokens == 0
    assert again.outputs[0].token_ids == first.outputs[0].token_ids == hit.outputs[0].token_ids


def test_reset_prefix_cache_refuses_while_requests_are_in_flight(llm):
    engine = llm.engine
    engine.add_request(engine.next_request_id(), PROMPT, GREEDY)
    with pytest.raises(RuntimeError, match="in flight"):
        llm.reset_prefix_cache()
    while engine.has_unfinished_requests():
        engine.step()
    llm.reset_prefix_cache()
