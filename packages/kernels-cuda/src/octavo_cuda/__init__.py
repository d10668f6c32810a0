"""octavo_cuda: CUDA C++ PagedAttention and cache kernels for Octavo.

The kernels are built just in time on first use (see :mod:`octavo_cuda.build`); the backend
registered as ``"cuda"`` is :class:`octavo_cuda.backend.CudaAttentionBackend`.
"""
