"""Entry-point module: replaces core's ``fcfs`` scheduler and models' ``LlamaForCausalLM``."""

from octavo.plugins import hookimpl


@hookimpl
def register_schedulers(register):
    register("fcfs", "octavo_acme_plugin.replacements:AcmeFCFSScheduler", override=True)


@hookimpl
def register_models(register):
    register("LlamaForCausalLM", "octavo_acme_plugin.replacements:AcmeLlamaForCausalLM",
             override=True)
