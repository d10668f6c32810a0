"""The module named by the ``octavo`` entry point: one hook implementation per hookspec.

Classes are registered as string references, so nothing heavy is imported until Octavo
uses them.
"""

import click

from octavo.plugins import get_plugin_manager, hookimpl

DISTRIBUTION = "octavo-example-plugin"


@hookimpl
def register_models(register):
    register("OctavoExampleForCausalLM", "octavo_example_plugin.model:ExampleForCausalLM")


@hookimpl
def register_attention_backends(register):
    register("example-sdpa", "octavo_example_plugin.attention:SDPAAttentionBackend")


@hookimpl
def register_layer_ops(register):
    register("example-ops", "octavo_example_plugin.layer_ops:Float64LayerOps")


@hookimpl
def register_quantization_methods(register):
    register("example_int8", "octavo_example_plugin.quantization:Int8WeightOnlyMethod")


@hookimpl
def register_weight_formats(register):
    register("*.npz", "octavo_example_plugin.weights:NpzFormat")


@hookimpl
def register_schedulers(register):
    register("example-fcfs", "octavo_example_plugin.engine:ExampleScheduler")


@hookimpl
def register_kv_cache_managers(register):
    register("example-paged", "octavo_example_plugin.engine:ExampleKVCacheManager")


@hookimpl
def register_swappers(register):
    register("example-host", "octavo_example_plugin.engine:ExampleSwapper")


@hookimpl
def register_platforms(register):
    register("example-cpu", "octavo_example_plugin.platform:ExampleCpuPlatform")


@hookimpl
def register_commands(cli):
    @cli.command(name="example-registered")
    def example_registered():
        """List what octavo-example-plugin registered, one 'kind: name' a line."""
        for registry in get_plugin_manager().registries.values():
            for name in registry:
                if registry.entry(name).distribution == DISTRIBUTION:
                    click.echo(f"{registry.kind}: {name}")
