"""Engine configuration: one pydantic-settings model per concern (env prefix ``OCTAVO_``).

The CLI maps its options onto these same fields, so ``--block-size 32`` and
``OCTAVO_BLOCK_SIZE=32`` mean the same thing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_prefix="OCTAVO_", extra="forbid", validate_assignment=True)


class ModelSettings(BaseSettings):
    """Which model to load and how."""

    model_config = _ENV

    model: str | None = Field(None, description="Folder, weights file, GGUF file or hub id; "
                              "None loads the bundled demo SmolLM2-135M-Instruct.")
    tokenizer: str | None = Field(None, description="Tokenizer source when not the model's own.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: on CPU bfloat16 where this CPU has bf16 product instructions "
                "(AMX, AVX512-BF16) and they measure faster, else float32; on CUDA the "
                "checkpoint's dtype (or bfloat16).")
    device: str = Field("auto", description="A registered platform (cpu, cuda, or a "
                        "plugin's; `octavo plugins` lists them), or auto: the available one "
                        "with the highest priority (CUDA when there is a GPU).")
    max_model_len: int | None = Field(None, gt=0, description="Defaults to the model's context.")
    attention_backend: str | None = Field(None, description="None: best supported backend.")
    quantization: str | None = Field(
        None, description="A registered quantization method (gptq, awq; `octavo plugins` "
        "lists them) the checkpoint must use; None: whatever its quantization config says.")
    seed: int = Field(0, description="Seeds the generator of requests that give no seed.")
    trust_remote_code: bool = False


class CacheSettings(BaseSettings):
    """The paged KV cache."""

    model_config = _ENV

    block_size: int = Field(16, gt=0)
    kv_cache_memory_gib: float | None = Field(
        None, gt=0, description="KV cache size; default 1 GiB on CPU, free memory on CUDA.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enable_prefix_caching: bool = True
    kv_cache_manager: str = "paged"
    num_gpu_blocks_override: int | None = Field(None, gt=0, description="Exact block count.")
    swap_space_gib: float = Field(
        0, ge=0, description="Size of the swap tier that holds preempted requests' blocks and "
        "cached prefix blocks evicted from the device pool; 0: no tier.")
    kv_offload: str = Field("host", description="Which registered swapper holds the tier: "
                            "host (RAM, pinned on CUDA) or disk (a file under kv_offload_dir).")
    kv_offload_dir: str | None = Field(
        None, description="Folder of the disk tier's file; None: the system's temporary folder.")


class SchedulerSettings(BaseSettings):
    """Continuous batching."""

    model_config = _ENV

    scheduler: str = Field("fcfs", description="fcfs or priority (or a plugin's).")
    max_num_batched_tokens: int = Field(2048, gt=0, description="Token budget per step.")
    max_num_seqs: int = Field(256, gt=0)
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int | None = Field(
        512, gt=0, description="Most prompt tokens of one request per step (chunked prefill), "
        "so a long prompt lets short requests in every step; None: the whole budget. "
        "512: docs/benchmarks.md, 'Head-of-line blocking'.")
    preemption_mode: Literal["auto", "swap", "recompute"] = Field(
        "auto", description="What a preempted request's KV blocks become: swapped out to the "
        "tier (swap_space_gib) and back, recomputed, or auto: swap when the measured copy "
        "costs less than recomputing (recompute without a tier).")

    @field_validator("preemption_mode", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value


class ParallelSettings(BaseSettings):
    """Tensor parallelism: how many ranks share the model and where their workers run
    (docs/distributed.md)."""

    model_config = _ENV

    tensor_parallel_size: int = Field(
        1, ge=1, description="Ranks that each hold a shard of every layer and of the KV cache; "
        "it must divide the attention heads, and the KV heads or be a multiple of them.")
    distributed_executor_backend: Literal["uni", "mp", "ray"] | None = Field(
        None, description="Where the ranks run: uni (this process; one rank), mp (worker "
        "processes on this machine), ray (Ray actors, on one or several machines; needs "
        "octavo-core[ray]); None: uni for one rank, mp for more.")
    ray_placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How the ray backend's placement group places one bundle per rank: "
        "PACK fills a node first, STRICT_SPREAD puts every rank on another node.")

    @model_validator(mode="after")
    def _one_rank_in_process(self) -> ParallelSettings:
        if self.distributed_executor_backend == "uni" and self.tensor_parallel_size > 1:
            raise ValueError(f"distributed_executor_backend 'uni' runs one rank in this process; "
                             f"tensor_parallel_size {self.tensor_parallel_size} needs 'mp' or "
                             "'ray'")
        return self

    @property
    def executor_backend(self) -> str:
        """The backend in use: the one chosen, else uni for one rank and mp for more."""
        if self.distributed_executor_backend is not None:
            return self.distributed_executor_backend
        return "uni" if self.tensor_parallel_size == 1 else "mp"
