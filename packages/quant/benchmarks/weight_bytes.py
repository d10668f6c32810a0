"""Weight memory of a model as Octavo holds it after loading (parameters and buffers).

    python packages/quant/benchmarks/weight_bytes.py [MODEL ...]   # default: the demo

Prints the total and the part in linear layers (quantized or dense), in MB (10**6 bytes).
"""

from __future__ import annotations

import sys

import torch


def tensor_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        try:
            key, size = tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # an opaque packed tensor
            key, size = id(tensor), tensor.numel() * tensor.element_size()
        if key not in seen:
            seen.add(key)
            total += size
    return total


def main() -> None:
    from octavo.config import ModelSettings
    from octavo.layers import LinearBase
    from octavo.model_loader.loader import load_model

    for name in sys.argv[1:] or [None]:
        model = load_model(ModelSettings(model=name, device="cpu", dtype="float32")).model
        linears = sum(tensor_bytes(m) for m in model.modules() if isinstance(m, LinearBase))
        print(f"{name or 'demo'}: all {tensor_bytes(model) / 1e6:.1f} MB, "
              f"linear layers {linears / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
