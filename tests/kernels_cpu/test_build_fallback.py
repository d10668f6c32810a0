"""A CPU kernel build that fails falls back: to lower ISA levels, then to torch, with a WARNING.

The builds here compile a one-function source (or a broken one) into temporary folders, so
they take seconds and leave the real kernel's build alone.
"""

from __future__ import annotations

import logging

import pytest
import torch

from octavo_cpu import build
from octavo_cpu.backend import CpuAttentionBackend

if build.missing_toolchain() is not None:
    pytest.skip(build.missing_toolchain(), allow_module_level=True)

TINY = "int octavo_cpu_build_probe() { return 1; }\n"
BROKEN = "#error this source is broken on purpose\n"


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """A build state that has tried nothing, with sources and build folder in ``tmp_path``."""
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    monkeypatch.setattr(build, "CSRC_DIR", csrc)
    monkeypatch.setattr(build, "_loaded", False)
    monkeypatch.setattr(build, "_failure", None)
    monkeypatch.setenv("OCTAVO_CPU_BUILD_DIR", str(tmp_path / "build"))

    def with_source(text: str) -> None:
        (csrc / "kernel.cpp").write_text(text)

    return with_source


def reject_march(monkeypatch, *levels: str) -> None:
    """A compiler that does not know ``-march`` for ``levels`` (as GCC 10 and x86-64-v4)."""
    real = build.compiler_flags
    monkeypatch.setattr(build, "compiler_flags", lambda level=None: [
        "-march=no-such-cpu" if f == f"-march={level}" and level in levels else f
        for f in real(level)])


def test_levels_go_downwards(monkeypatch):
    monkeypatch.setattr(build, "isa_level", lambda: "x86-64-v4")
    assert build.levels_to_try() == ["x86-64-v4", "x86-64-v3", "generic"]
    monkeypatch.setattr(build, "isa_level", lambda: "generic")
    assert build.levels_to_try() == ["generic"]


def test_a_rejected_march_falls_back_to_the_next_level(fresh_build, monkeypatch, caplog):
    fresh_build(TINY)
    monkeypatch.setattr(build, "isa_level", lambda: "x86-64-v3")
    reject_march(monkeypatch, "x86-64-v3")
    with caplog.at_level(logging.INFO, logger="octavo_cpu.build"):
        build.load_ops()
    assert build._loaded and build.unavailable_reason() is None
    assert (build.build_directory("generic") / "octavo_cpu_kernels_generic.so").exists()
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING).getMessage()
    assert warning.startswith("octavo_cpu: built the CPU kernel for generic instead of x86-64-v3")
    assert "no-such-cpu" in warning and "GCC 11+" in warning
    assert "compiling the CPU kernel for x86-64-v3" in caplog.text


def test_a_compile_error_at_every_level_falls_back_to_torch(fresh_build, monkeypatch, caplog):
    fresh_build(BROKEN)
    monkeypatch.setattr(build, "isa_level", lambda: "x86-64-v3")
    with caplog.at_level(logging.WARNING, logger="octavo_cpu.build"):
        reason = CpuAttentionBackend.unsupported_reason("cpu", torch.float32, 64)
        again = build.unavailable_reason()  # no second build, no second warning
    assert reason == again
    assert reason.startswith("octavo_cpu could not build its CPU kernel at any level "
                             "(x86-64-v3: RuntimeError: Error building extension")
    assert "broken on purpose" in reason and "generic: RuntimeError" in reason
    assert "the slower torch backend" in reason and "OCTAVO_CPU_VERBOSE_BUILD=1" in reason
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [reason]
    with pytest.raises(RuntimeError, match="could not build"):
        build.load_ops()


def test_an_unwritable_build_directory_falls_back_with_the_fix(fresh_build, tmp_path,
                                                               monkeypatch):
    fresh_build(TINY)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("OCTAVO_CPU_BUILD_DIR", str(blocker / "build"))  # under a file
    reason = build.unavailable_reason()
    assert reason is not None and f"build directory {blocker / 'build'}" in reason
    assert "set OCTAVO_CPU_BUILD_DIR to a writable folder" in reason


def test_the_engine_picks_another_backend_when_the_build_fails(fresh_build, monkeypatch):
    from octavo.attention import select_attention_backend

    fresh_build(BROKEN)
    monkeypatch.setattr(build, "isa_level", lambda: "generic")
    chosen = select_attention_backend("cpu", torch.float32, 64)
    assert chosen is not CpuAttentionBackend
    assert build._failure is not None
