"""Entry-point plugin of octavo_cpu: registers the CPU attention backend and layer ops (the
packed dense product).

The reference is a string, so importing the plugin never imports torch's extension tooling or
builds anything.
"""

from octavo.plugins import hookimpl


@hookimpl
def register_attention_backends(register):
    register("cpu", "octavo_cpu.backend:CpuAttentionBackend")


@hookimpl
def register_layer_ops(register):
    register("cpu", "octavo_cpu.layer_ops:CpuLayerOps")
