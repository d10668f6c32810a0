"""octavo-quant registers its methods through the plugin hook."""

from octavo.plugins import quantization_methods
from octavo_quant.awq import AWQMethod
from octavo_quant.gptq import GPTQMethod


def test_gptq_and_awq_are_registered_by_quant_method():
    registry = quantization_methods()
    assert registry.get("gptq") is GPTQMethod
    assert registry.get("awq") is AWQMethod
