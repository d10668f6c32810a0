"""A toy platform: the host CPU under another name, preferring the example's attention backend
and always choosing float32 (the only dtype that backend supports)."""

import torch

from octavo.platforms import CpuPlatform


class ExampleCpuPlatform(CpuPlatform):
    """``device="example-cpu"``: core's CPU platform with its own dtype and backend choice."""

    name = "example-cpu"
    priority = -10  # never picked by device=auto
    attention_backends = ("example-sdpa",)

    def default_dtype(self, config):
        return torch.float32
