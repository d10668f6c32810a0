"""Octavo: a fast, memory-efficient LLM inference and serving engine.

    from octavo import LLM, SamplingParams
    llm = LLM()  # the bundled demo SmolLM2-135M-Instruct
    print(llm.generate("The capital of France is", SamplingParams(temperature=0))[0].outputs[0].text)
"""

from typing import TYPE_CHECKING

from octavo.threads import apply_openmp_defaults

apply_openmp_defaults()  # before torch loads, or it is too late (octavo.threads)

__version__ = "0.1.0"

__all__ = ["LLM", "AsyncLLM", "SamplingParams", "RequestOutput", "CompletionOutput"]

_LAZY = {
    "LLM": "octavo.entrypoints.llm",
    "AsyncLLM": "octavo.entrypoints.async_llm",
    "SamplingParams": "octavo.sampling_params",
    "RequestOutput": "octavo.outputs",
    "CompletionOutput": "octavo.outputs",
}

if TYPE_CHECKING:
    from octavo.entrypoints.async_llm import AsyncLLM
    from octavo.entrypoints.llm import LLM
    from octavo.outputs import CompletionOutput, RequestOutput
    from octavo.sampling_params import SamplingParams


def __getattr__(name: str):
    """Import the heavy parts (torch, transformers) only when they are used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'octavo' has no attribute {name!r}")
