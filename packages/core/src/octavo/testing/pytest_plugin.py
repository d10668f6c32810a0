"""Octavo's pytest plugin (entry point ``pytest11``): markers and conformance-suite fixtures.

Third-party packages subclass the suites in ``octavo.testing`` and get these for free, among
them ``conformance_coverage``: which registered architectures the session's model suites
verify (see :mod:`octavo.testing.coverage`).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skips itself without one)")
    config.addinivalue_line("markers", "slow: long-running; excluded from the default suite")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return  # torch is imported only where a gpu test asks whether CUDA is there
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip_gpu)


def pytest_collection_finish(session: pytest.Session) -> None:
    from octavo.testing.coverage import COVERAGE_KEY, collect_coverage

    session.config.stash[COVERAGE_KEY] = collect_coverage(session.items)


@pytest.fixture(scope="session")
def conformance_coverage(request: pytest.FixtureRequest) -> dict[str, list[str]]:
    """Architecture -> node ids of the collected (selected) model suite classes verifying it."""
    from octavo.testing.coverage import COVERAGE_KEY

    return request.config.stash.get(COVERAGE_KEY, {})
