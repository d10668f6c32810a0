"""A weight format for NumPy ``.npz`` archives of HF-named arrays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from octavo.model_loader.weights import WeightFormat


class NpzFormat(WeightFormat):
    """Yields every array of an ``.npz`` file as a tensor, under its archive name."""

    name = "npz"

    def iter_weights(self, path: Path, config: Any) -> Iterator[tuple[str, torch.Tensor]]:
        with np.load(path) as archive:
            for name in archive.files:
                yield name, torch.from_numpy(archive[name])
