"""The weight-format interface: turn checkpoint files into HF-named tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch


class WeightFormat(ABC):
    """Reads one kind of checkpoint file.

    Registered under a file glob (``"*.safetensors"``); the loader uses the first registered
    pattern that matches files of the checkpoint.
    """

    name: ClassVar[str]

    @abstractmethod
    def iter_weights(self, path: Path, config: Any) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(hf_parameter_name, tensor)`` for every tensor in ``path``.

        ``config`` is the model's HF config (formats such as GGUF need it to rename and
        un-permute tensors).
        """
