"""PyTorch ``*.bin`` / ``*.pt`` checkpoints saved with ``torch.save(state_dict)``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from octavo.model_loader.weights import WeightFormat


class TorchBinFormat(WeightFormat):
    """Loads a pickled state dict safely (``weights_only``) and memory-mapped."""

    name = "pytorch"

    def iter_weights(self, path: Path, config: Any) -> Iterator[tuple[str, torch.Tensor]]:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(state_dict, dict):
            raise ValueError(f"{path} does not hold a state dict (found {type(state_dict).__name__})")
        yield from state_dict.items()
