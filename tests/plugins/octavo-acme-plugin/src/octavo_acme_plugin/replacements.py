"""The replacements: the built-ins, counting how often they are used."""

from octavo.engine.scheduler import FCFSScheduler
from octavo_models.llama import LlamaForCausalLM


class AcmeFCFSScheduler(FCFSScheduler):
    """FCFS that counts its steps."""

    steps = 0

    def schedule(self):
        type(self).steps += 1
        return super().schedule()


class AcmeLlamaForCausalLM(LlamaForCausalLM):
    """Llama that counts its forward passes."""

    forwards = 0

    def forward(self, *args, **kwargs):
        type(self).forwards += 1
        return super().forward(*args, **kwargs)
