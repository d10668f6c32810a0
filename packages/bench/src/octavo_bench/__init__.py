"""``octavo bench``: offline throughput, one-batch latency and serving benchmarks.

Every run draws its requests from a seeded workload (:mod:`octavo_bench.workload`), so Octavo
and its peers (HF transformers, llama.cpp) do the same work, and reports the machine load and
thread settings beside every figure (:mod:`octavo_bench.machine`).
"""
