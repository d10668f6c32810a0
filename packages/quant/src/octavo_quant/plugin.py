"""Entry-point plugin of octavo_quant: the GPTQ and AWQ linear methods."""

from octavo.plugins import hookimpl


@hookimpl
def register_quantization_methods(register):
    register("gptq", "octavo_quant.gptq:GPTQMethod")
    register("awq", "octavo_quant.awq:AWQMethod")
