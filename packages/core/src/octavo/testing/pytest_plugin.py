"""Octavo's pytest plugin (entry point ``pytest11``): markers and conformance-suite fixtures.

Third-party packages subclass the suites in ``octavo.testing`` and get these for free.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skips itself without one)")
    config.addinivalue_line("markers", "slow: long-running; excluded from the default suite")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
