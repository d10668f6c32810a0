"""octavo_triton: Triton kernels for Octavo (paged attention, KV cache write, RMSNorm, rotary).

Importing this package does not import Triton; ``octavo_triton.backend`` does.
"""
