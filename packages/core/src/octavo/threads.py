"""OpenMP's wait policy, chosen by the engine instead of asked of its users.

torch runs its CPU ops on an OpenMP pool (GNU libgomp in the PyPI wheels). Between two
parallel regions the idle thread either spins or sleeps, and a decode step is hundreds of
small regions: with too little spinning, the second core sleeps between ops and each wakes
late; with too much, on a machine shared with anything else the spinning threads take the
cores that the work needs. Measured on 2 cores (docs/benchmarks.md, "OpenMP's wait policy"):
sleeping at once (``PASSIVE``) cost 0% in one stream and 18% at batch 16 on a quiet machine,
while beside one busy process libgomp's default spin (and even a 10k-iteration spin) ran
1.7-2x slower than ``PASSIVE``. So the engine sleeps: a bounded loss when quiet rather than
a halving whenever anything else runs.

OpenMP reads its environment once, when torch loads its library, so the defaults are set when
``octavo`` is imported, only if torch is not loaded yet and the user set none of
:data:`USER_SETTINGS`; ``OCTAVO_OPENMP_DEFAULTS=0`` leaves OpenMP's own defaults.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
# any of these set by the user means the user chose: nothing is changed
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
SWITCH = "OCTAVO_OPENMP_DEFAULTS"


def apply_openmp_defaults(environ: MutableMapping[str, str] = os.environ,
                          loaded_modules: dict | None = None) -> dict[str, str]:
    """Set :data:`OPENMP_DEFAULTS` in ``environ`` unless torch is already loaded (too late to
    matter), the user set one of :data:`USER_SETTINGS` or ``OCTAVO_OPENMP_DEFAULTS=0``;
    returns what was set."""
    modules = sys.modules if loaded_modules is None else loaded_modules
    if ("torch" in modules or environ.get(SWITCH) == "0"
            or any(name in environ for name in USER_SETTINGS)):
        return {}
    environ.update(OPENMP_DEFAULTS)
    return dict(OPENMP_DEFAULTS)
