"""``scripts/gpu-check --dry-run`` walks every step on the CPU, so the script does not fail on
a GPU machine for a silly reason (a renamed file, a wrong option) and waste device time."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), TRITON_INTERPRET="1", OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check"), "--dry-run"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stdout[result.stdout.index("summary"):result.stdout.index("attention table")]
    steps = [line for line in summary.splitlines() if line.startswith("  ") and line.strip()]
    assert len(steps) == 5 and all(": ok" in line for line in steps), summary
    table = (tmp_path / "attention.log").read_text()
    for shape in ("decode b1 ctx40", "decode b3 ctx20-70", "prefill 48"):
        for backend in ("triton", "torch", "sdpa (contiguous, padded)"):
            row = next(line for line in table.splitlines()
                       if line.startswith(f"| {shape} ") and f"| {backend} " in line)
            assert "ERROR" not in row
    assert (tmp_path / "attention.json").exists()
