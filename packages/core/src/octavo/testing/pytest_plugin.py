"""Octavo's pytest plugin (entry point ``pytest11``): markers and conformance-suite fixtures.

Installed with ``octavo-core``, so pytest loads it in every project of that environment; it
acts only in a project that opts in with the ini option ``octavo_testing = true``
(``[tool.pytest.ini_options]`` in pyproject.toml, or pytest.ini). Elsewhere it adds nothing:
no markers, no skipping of anyone's ``gpu`` tests, no torch import.

In a project that opts in (Octavo's own tests, a third-party plugin subclassing the suites in
``octavo.testing``): the ``gpu`` and ``slow`` markers; ``gpu`` tests skip themselves without a
CUDA device (torch is imported only when a ``gpu`` test was collected); and the
``conformance_coverage`` fixture: which registered names (models, schedulers, KV cache
managers, swappers, weight formats, quantization methods) the session's conformance suite
classes verify (see :mod:`octavo.testing.coverage`).
"""

from __future__ import annotations

import pytest

OPT_IN = "octavo_testing"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(OPT_IN, type="bool", default=False,
                  help="Turn on Octavo's pytest plugin in this project: the gpu and slow "
                       "markers, gpu tests skipped without CUDA, conformance coverage.")


def active(config: pytest.Config) -> bool:
    """Whether this project opted in (``octavo_testing = true``)."""
    return bool(config.getini(OPT_IN))


def pytest_configure(config: pytest.Config) -> None:
    if not active(config):
        return
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skips itself without one)")
    config.addinivalue_line("markers", "slow: long-running; excluded from the default suite")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not active(config):
        return
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
    if not active(session.config):
        return
    from octavo.testing.coverage import COVERAGE_KEY, collect_coverage

    session.config.stash[COVERAGE_KEY] = collect_coverage(session.items)


@pytest.fixture(scope="session")
def conformance_coverage(request: pytest.FixtureRequest) -> dict[str, dict[str, list[str]]]:
    """Registry hook -> registered name -> node ids of the collected (selected) suite classes
    verifying it.

    Needs ``octavo_testing = true``: without it nothing is collected and the fixture fails
    rather than report an empty coverage.
    """
    from octavo.testing.coverage import COVERAGE_KEY

    if not active(request.config):
        pytest.fail(f"conformance_coverage needs the ini option {OPT_IN} = true "
                    "(Octavo's pytest plugin acts only in projects that opt in)")
    return request.config.stash.get(COVERAGE_KEY, {})
