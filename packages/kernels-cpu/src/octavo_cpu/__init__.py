"""octavo_cpu: C++ PagedAttention for the CPU.

The kernel is built just in time on first use (see :mod:`octavo_cpu.build`); the backend
registered as ``"cpu"`` is :class:`octavo_cpu.backend.CpuAttentionBackend`.
"""
