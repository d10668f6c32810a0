"""octavo_triton: Triton kernels for Octavo (paged attention, KV cache write).

Importing this package does not import Triton; ``octavo_triton.backend`` does.
"""
