"""octavo.threads: the engine's OpenMP defaults are set before torch loads, never over the
user's own settings, and reach the OpenMP runtime of a fresh process."""

import subprocess
import sys

import pytest

from octavo.threads import OPENMP_DEFAULTS, SWITCH, USER_SETTINGS, apply_openmp_defaults


def test_defaults_are_set_before_torch_loads():
    environ = {}
    assert apply_openmp_defaults(environ, loaded_modules={}) == OPENMP_DEFAULTS
    assert environ == OPENMP_DEFAULTS


@pytest.mark.parametrize("name", USER_SETTINGS)
def test_a_user_setting_wins(name):
    environ = {name: "user"}
    assert apply_openmp_defaults(environ, loaded_modules={}) == {}
    assert environ == {name: "user"}


def test_nothing_is_set_once_torch_is_loaded_or_when_switched_off():
    environ = {}
    assert apply_openmp_defaults(environ, loaded_modules={"torch": object()}) == {}
    assert apply_openmp_defaults({SWITCH: "0"}, loaded_modules={}) == {}
    assert environ == {}


def _child_environment(env: dict[str, str]) -> dict[str, str]:
    code = ("import os, octavo, torch; "
            f"print({{k: os.environ.get(k) for k in {list(USER_SETTINGS)!r}}})")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    return eval(out)  # a dict literal printed by the child


def test_importing_octavo_first_sets_the_defaults_in_a_fresh_process(monkeypatch):
    import os

    env = {k: v for k, v in os.environ.items() if k not in (*USER_SETTINGS, SWITCH)}
    seen = _child_environment(env)
    assert {k: v for k, v in seen.items() if v is not None} == OPENMP_DEFAULTS
    seen = _child_environment({**env, "GOMP_SPINCOUNT": "1000"})
    assert seen == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": None}
