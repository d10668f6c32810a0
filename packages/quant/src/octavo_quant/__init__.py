"""octavo_quant: GPTQ and AWQ checkpoints for Octavo (registered through the ``octavo``
entry point; see docs/quantization.md)."""
