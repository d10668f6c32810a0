"""``octavo generate`` / ``octavo chat`` and engine assembly in code, on a tiny model."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from octavo import LLM, SamplingParams
from octavo.cli import cli
from octavo.config import ModelSettings
from octavo.engine.engine_core import EngineCore
from octavo.engine.llm_engine import LLMEngine
from octavo.engine.model_runner import ModelRunner, allocate_kv_caches
from octavo.engine.scheduler import PriorityScheduler
from octavo.kv_cache import PagedKVCacheManager
from octavo.model_loader.loader import load_model
from octavo.testing.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny_model(path, "llama")
    return path


def test_generate_prints_what_llm_generates(folder):
    result = CliRunner().invoke(cli, ["generate", "-m", str(folder), "--device", "cpu",
                                      "--max-tokens", "6", "--block-size", "8",
                                      "w1 w2 w3", "w9"])
    assert result.exit_code == 0, result.output
    llm = LLM(str(folder), device="cpu", block_size=8)
    expected = [o.outputs[0].text for o in llm.generate(
        ["w1 w2 w3", "w9"], SamplingParams(temperature=0, max_tokens=6))]
    assert result.output.splitlines() == expected


def test_generate_reports_bad_options_as_usage_errors(folder):
    result = CliRunner().invoke(cli, ["generate", "-m", str(folder), "--device", "cpu",
                                      "--max-tokens", "0", "w1"])
    assert result.exit_code == 2 and "max_tokens" in result.output
    result = CliRunner().invoke(cli, ["generate", "-m", str(folder), "--block-size", "-3", "w1"])
    assert result.exit_code != 0 and "block_size" in result.output


def test_chat_uses_the_chat_template_and_keeps_history(folder):
    result = CliRunner().invoke(cli, ["chat", "-m", str(folder), "--device", "cpu",
                                      "--max-tokens", "4"], input="w1 w2\nw3\n\n")
    assert result.exit_code == 0, result.output
    replies = [line for line in result.output.splitlines() if "assistant> " in line]
    assert len(replies) == 2
    llm = LLM(str(folder), device="cpu")
    (first,) = llm.chat([{"role": "user", "content": "w1 w2"}],
                        SamplingParams(temperature=0, max_tokens=4))
    assert replies[0].split("assistant> ", 1)[1] == first.outputs[0].text


def test_engine_assembled_in_code_from_chosen_components(folder):
    loaded = load_model(ModelSettings(model=str(folder), device="cpu"))
    caches = allocate_kv_caches(loaded.kv_spec, 64, 8, loaded.dtype, loaded.device)
    scheduler = PriorityScheduler(PagedKVCacheManager(64, 8), max_num_batched_tokens=32,
                                  max_num_seqs=4, max_model_len=loaded.max_model_len)
    core = EngineCore(scheduler, ModelRunner(loaded.model, caches, 8, loaded.device))
    engine = LLMEngine(core, loaded.tokenizer, vocab_size=loaded.hf_config.vocab_size,
                       max_model_len=loaded.max_model_len, eos_token_ids=loaded.eos_token_ids)
    custom = LLM(engine=engine)
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    prompts = [[4, 8, 15, 16, 23, 42], [9, 9, 9]]
    got = [o.outputs[0].token_ids for o in custom.generate(prompts, params, priority=[1, 0])]
    ref = [o.outputs[0].token_ids for o in LLM(str(folder), device="cpu").generate(prompts, params)]
    assert got == ref
