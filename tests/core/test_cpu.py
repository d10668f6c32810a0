"""octavo.cpu: the CPU's flags are read from /proc/cpuinfo, and ``dtype=auto`` picks bfloat16
only where the CPU has bfloat16 product instructions, oneDNN can use them and they measure
faster than float32."""

import pytest
import torch

from octavo import cpu
from octavo.model_loader.loader import resolve_dtype

CPUINFO = """processor\t: 0
model name\t: Example Xeon 9999
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 other
"""


@pytest.fixture
def fake_cpu(tmp_path, monkeypatch):
    """A /proc/cpuinfo of our own; returns a function that sets its flags line."""
    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu, "_CPUINFO", path)

    def with_flags(flags: str) -> None:
        path.write_text(f"processor\t: 0\nmodel name\t: Example CPU\nflags\t\t: {flags}\n")
    return with_flags


def test_model_and_notable_flags_are_read(tmp_path, monkeypatch):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    monkeypatch.setattr(cpu, "_CPUINFO", path)
    assert cpu.cpu_model() == "Example Xeon 9999"
    assert cpu.cpu_flags() == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]


def test_a_missing_cpuinfo_gives_no_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "_CPUINFO", tmp_path / "absent")
    assert cpu.cpu_flags() == []
    assert cpu.cpu_model()  # platform's answer instead


def test_without_bf16_instructions_float32_is_chosen_without_measuring(fake_cpu, monkeypatch):
    fake_cpu("avx2 fma avx512f")
    monkeypatch.setattr(cpu, "measure_bf16_speedup", _must_not_run)
    choice = cpu._choose_cpu_dtype()
    assert choice.dtype == torch.float32 and "no bfloat16 product instructions" in choice.reason


def test_bf16_instructions_without_a_onednn_path_mean_float32(fake_cpu, monkeypatch):
    fake_cpu("avx2 avx512_bf16")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(cpu, "measure_bf16_speedup", _must_not_run)
    choice = cpu._choose_cpu_dtype()
    assert choice.dtype == torch.float32 and "no bfloat16 path" in choice.reason


@pytest.mark.parametrize(("speedup", "dtype"), [(3.1, torch.bfloat16), (1.25, torch.bfloat16),
                                                (1.1, torch.float32), (0.01, torch.float32)])
def test_with_bf16_instructions_the_measurement_decides(fake_cpu, monkeypatch, speedup, dtype):
    fake_cpu("avx2 amx_tile amx_bf16")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(cpu, "measure_bf16_speedup", lambda: speedup)
    choice = cpu._choose_cpu_dtype()
    assert choice.dtype == dtype
    assert f"{speedup:.2f}x" in choice.reason and "amx_bf16" in choice.reason


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="oneDNN has no bfloat16 path on this CPU")
def test_the_speedup_is_measured_here():
    assert 0 < cpu.measure_bf16_speedup(rows=4, features=128, repeats=2) < 1000


def test_auto_on_the_cpu_is_the_fastest_dtype_here():
    choice = cpu.fastest_cpu_dtype()
    assert resolve_dtype("auto", torch.device("cpu"), object()) == choice.dtype
    if "avx512_bf16" not in cpu.cpu_flags() and "amx_bf16" not in cpu.cpu_flags():
        assert choice.dtype == torch.float32


def _must_not_run():
    raise AssertionError("measured although the flags already decide")
