"""Process-wide settings for the test run, applied before torch or triton load.

- ``OMP_WAIT_POLICY=PASSIVE``: with two cores, OpenMP's busy-wait makes torch several times
  slower whenever anything else runs.
- ``OCTAVO_CACHE_DIR``: a fresh cache per run (GGUF conversions).
- ``TRITON_INTERPRET=1`` without CUDA: Triton kernels run in its interpreter on the CPU. It is
  read when a kernel is defined, so it must be set before any module imports triton.
"""

import os
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Converted GGUF configs/tokenizers go to a per-run cache, never the user's home.
os.environ.setdefault("OCTAVO_CACHE_DIR", tempfile.mkdtemp(prefix="octavo-test-cache-"))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random tiny Llama (RoPE, GQA) saved with its tokenizer: the folder."""
    from octavo.testing.tiny_models import save_tiny_model

    folder = tmp_path_factory.mktemp("llama")
    save_tiny_model(folder, "llama")
    return folder


@pytest.fixture(scope="module")
def tiny_mpt(tmp_path_factory):
    """A random tiny MPT (ALiBi) saved with its tokenizer: the folder."""
    from octavo.testing.tiny_models import save_tiny_mpt

    folder = tmp_path_factory.mktemp("mpt")
    save_tiny_mpt(folder)
    return folder
