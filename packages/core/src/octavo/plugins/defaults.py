"""Core's default implementations, registered as a plugin like any other."""

from octavo.plugins.hookspecs import hookimpl


@hookimpl
def register_attention_backends(register):
    register("torch", "octavo.attention.torch_backend:TorchAttentionBackend")


@hookimpl
def register_schedulers(register):
    register("fcfs", "octavo.engine.scheduler:FCFSScheduler")
    register("priority", "octavo.engine.scheduler:PriorityScheduler")


@hookimpl
def register_kv_cache_managers(register):
    register("paged", "octavo.kv_cache.manager:PagedKVCacheManager")


@hookimpl
def register_swappers(register):
    register("host", "octavo.kv_cache.swapper:HostSwapper")
    register("disk", "octavo.kv_cache.swapper:DiskSwapper")


@hookimpl
def register_quantization_methods(register):
    register("none", "octavo.layers.quantization:UnquantizedMethod")


@hookimpl
def register_layer_ops(register):
    register("onednn", "octavo.layers.dense:OneDnnLayerOps")


@hookimpl
def register_platforms(register):
    register("cpu", "octavo.platforms:CpuPlatform")
    register("cuda", "octavo.platforms:CudaPlatform")
