"""Platforms: the registry behind ``device``, ``auto``, one-line errors, the engine's use of a
platform's dtype, backend order and memory, and the example plugin's toy platform."""

from __future__ import annotations

import types

import pytest
import torch
from click.testing import CliRunner

from octavo.cli import cli
from octavo.config import ModelSettings
from octavo.cpu import fastest_cpu_dtype
from octavo.platforms import CpuPlatform, CudaPlatform, platform_for, resolve_platform
from octavo.plugins import platforms

pytestmark = pytest.mark.usefixtures("fresh_plugins")


def test_core_registers_cpu_and_cuda():
    registry = platforms()
    assert registry.names()[:2] == ["cpu", "cuda"]
    assert registry.get("cpu") is CpuPlatform and registry.get("cuda") is CudaPlatform
    assert registry.entry("cpu").distribution == "octavo-core"
    assert registry.entry("example-cpu").distribution == "octavo-example-plugin"


def test_auto_is_the_available_platform_with_the_highest_priority():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_platform("auto").name == expected
    assert ModelSettings().device == "auto"


def test_an_unknown_device_is_one_line_naming_the_platforms():
    with pytest.raises(ValueError, match="unknown device 'tpu'.*cpu, cuda, example-cpu") as exc:
        resolve_platform("tpu")
    assert "\n" not in str(exc.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="device 'cuda' was requested but CUDA is not available"):
        resolve_platform("cuda")


def test_what_each_builtin_platform_answers():
    cpu, cuda = CpuPlatform(), CudaPlatform()
    assert cpu.device() == torch.device("cpu") and cuda.device() == torch.device("cuda")
    assert cpu.default_dtype(None) == fastest_cpu_dtype().dtype
    assert cuda.default_dtype(types.SimpleNamespace(dtype="float16")) == torch.float16
    assert cuda.default_dtype(types.SimpleNamespace(dtype=torch.float32)) == torch.bfloat16
    assert cpu.memory_info(torch.device("cpu")) is None
    assert cpu.attention_backends == cuda.attention_backends == ()
    assert isinstance(platform_for(torch.device("cpu")), CpuPlatform)
    assert isinstance(platform_for(torch.device("cuda")), CudaPlatform)


def test_settings_take_any_registered_name():
    assert ModelSettings(device="example-cpu").device == "example-cpu"


def test_an_unknown_device_fails_before_the_model_loads(tiny_llama):
    from octavo import LLM

    with pytest.raises(ValueError, match="unknown platform 'tpu'") as exc:
        LLM(str(tiny_llama), device="tpu")
    assert "\n" not in str(exc.value)
    result = CliRunner().invoke(cli, ["generate", "-m", str(tiny_llama), "--device", "tpu", "x"])
    assert result.exit_code == 2 and "unknown platform 'tpu'" in result.output


def test_the_example_platform_is_selected_with_its_dtype_and_backend(tiny_llama, caplog):
    """device="example-cpu": the plugin's platform decides the dtype (float32, the only one its
    preferred backend takes) and the attention backend (example-sdpa); the tokens equal core's
    CPU platform's with the torch backend."""
    from octavo import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompts = [[5, 9, 14, 3], [7, 7, 21]]
    with caplog.at_level("INFO", logger="octavo.attention.selector"):
        toy = LLM(str(tiny_llama), device="example-cpu", num_gpu_blocks_override=32,
                  block_size=4)
    assert "attention backend 'example-sdpa' for device=cpu, dtype=torch.float32" in caplog.text
    assert "the platform's preferred order: example-sdpa" in caplog.text
    got = [o.outputs[0].token_ids for o in toy.generate(prompts, params)]
    ref = LLM(str(tiny_llama), device="cpu", dtype="float32", attention_backend="torch",
              num_gpu_blocks_override=32, block_size=4)
    assert got == [o.outputs[0].token_ids for o in ref.generate(prompts, params)]


def test_kv_cache_size_comes_from_the_platforms_memory(monkeypatch):
    from octavo.config import CacheSettings
    from octavo.engine.builder import num_kv_blocks
    from octavo.modeling import KVCacheSpec

    spec = KVCacheSpec(num_layers=2, num_kv_heads=2, head_size=64)
    cache = CacheSettings(block_size=16, gpu_memory_utilization=0.5)
    block_bytes = spec.bytes_per_token(torch.float32) * 16
    cpu = torch.device("cpu")
    assert num_kv_blocks(cache, spec, torch.float32, cpu) == (1 << 30) // block_bytes  # default
    gib = 1 << 30
    monkeypatch.setattr(CpuPlatform, "memory_info", lambda self, device: (3 * gib, 4 * gib))
    budget = 2 * gib - 1 * gib - 1000  # half of total, less what is used, less activations
    assert num_kv_blocks(cache, spec, torch.float32, cpu, activation_bytes=1000) \
        == budget // block_bytes
