"""Entry-point plugin of octavo_cuda: registers the CUDA attention backend.

The reference is a string, so importing the plugin (and selecting among backends on a machine
without CUDA) never imports torch's extension tooling or builds anything.
"""

from octavo.plugins import hookimpl


@hookimpl
def register_attention_backends(register):
    register("cuda", "octavo_cuda.backend:CudaAttentionBackend")
