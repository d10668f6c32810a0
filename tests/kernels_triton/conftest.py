"""Run Triton kernels in the interpreter when there is no CUDA device.

Triton reads ``TRITON_INTERPRET`` when a kernel is defined, so this must be set before
``octavo_triton``'s kernel modules are imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
