"""Process-wide settings for the test run, applied before torch or triton load.

- ``OMP_WAIT_POLICY=PASSIVE``: with two cores, OpenMP's busy-wait makes torch several times
  slower whenever anything else runs.
- ``TRITON_INTERPRET=1`` without CUDA: Triton kernels run in its interpreter on the CPU. It is
  read when a kernel is defined, so it must be set before any module imports triton.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
