"""Entry-point plugin of octavo_triton: registers the Triton attention backend."""

from octavo.plugins import hookimpl


@hookimpl
def register_attention_backends(register):
    register("triton", "octavo_triton.backend:TritonAttentionBackend")
