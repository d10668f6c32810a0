"""scripts/check-cuda-compile: every .cu source compiles with nvcc (sm_90, sm_80; no GPU).

About 65 s of CPU on the 2-core CI machine (kernels ~50 s, the binding's g++ syntax check
~13 s), so it is marked slow; CI's own run of the script covers it as well.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check-cuda-compile"


def _nvcc_present() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _nvcc_present(), reason="needs nvcc")
def test_every_cuda_source_compiles():
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiles passed" in result.stdout
    assert "attention_fp16.cu" in result.stdout and "binding.cpp" in result.stdout
