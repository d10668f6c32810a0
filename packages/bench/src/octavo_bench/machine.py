"""What the machine was doing during a measurement: load, threads, versions, peak memory."""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from octavo.cpu import cpu_flags, cpu_model

MiB = 1 << 20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def machine_info() -> dict[str, object]:
    """CPU model, notable instruction sets, CPU count, torch threads, OpenMP wait policy and
    library versions."""
    import torch

    info: dict[str, object] = {
        "cpu": cpu_model(), "cpu_flags": " ".join(cpu_flags()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set (Linux ``clear_refs``); False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set since the last :func:`reset_peak_rss` (or process start)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class LoadWindow:
    """The load average before and after a measured span, its wall time, and the CPU time this
    process spent in it (all its threads; ``cpu_seconds / seconds`` is the cores it kept busy
    on average)."""

    load_before: float = field(default_factory=load_average)
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)
    load_after: float | None = None
    seconds: float | None = None
    cpu_seconds: float | None = None

    def close(self) -> LoadWindow:
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started
        self.load_after = load_average()
        return self
