"""Checkpoint file formats: each turns one weights file into HF-named tensors."""

from octavo_models.weights.gguf_format import GGUFFormat
from octavo_models.weights.safetensors_format import SafetensorsFormat
from octavo_models.weights.torch_bin_format import TorchBinFormat

__all__ = ["GGUFFormat", "SafetensorsFormat", "TorchBinFormat"]
