"""``*.safetensors`` checkpoints (one file, or one shard of a sharded checkpoint)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from octavo.model_loader.weights import WeightFormat


class SafetensorsFormat(WeightFormat):
    """Reads tensors lazily, one at a time, from a memory-mapped safetensors file."""

    name = "safetensors"

    def iter_weights(self, path: Path, config: Any) -> Iterator[tuple[str, torch.Tensor]]:
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except SafetensorError as exc:  # truncated or not a safetensors file
            raise ValueError(f"cannot read {path}: {exc}") from exc
        with handle as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, f.get_tensor(name)
