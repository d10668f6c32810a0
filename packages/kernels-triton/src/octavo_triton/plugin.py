"""Entry-point plugin of octavo_triton: the Triton attention backend and layer ops."""

from octavo.plugins import hookimpl


@hookimpl
def register_attention_backends(register):
    register("triton", "octavo_triton.backend:TritonAttentionBackend")


@hookimpl
def register_layer_ops(register):
    register("triton", "octavo_triton.layer_ops:TritonLayerOps")
