"""octavo_cpu: C++ PagedAttention and a packed float32 dense product for the CPU.

The kernel is built just in time on first use (see :mod:`octavo_cpu.build`); the backend
registered as ``"cpu"`` is :class:`octavo_cpu.backend.CpuAttentionBackend`; the dense product
is :mod:`octavo_cpu.dense` (``pack``, ``linear``).
"""
