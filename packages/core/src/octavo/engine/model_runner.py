"""Runs the model on one packed batch (no padding) and samples.

The step splits in three so that tensor-parallel ranks can share it: :func:`prepare_input`
(host arrays, once per step), :meth:`ModelRunner.run` (the forward pass, on every rank) and
:func:`sample_output` (sampling, where the requests live).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from octavo.attention.base import AttentionMetadata
from octavo.engine.executor import Executor
from octavo.engine.outputs import RunnerOutput, SchedulerOutput
from octavo.engine.sampler import (
    Sampler,
    SamplingRow,
    TokenLogprobs,
    compute_prompt_logprobs,
)
from octavo.modeling import CausalLM, KVCaches, KVCacheSpec


def allocate_kv_caches(spec: KVCacheSpec, num_blocks: int, block_size: int,
                       dtype: torch.dtype, device: torch.device) -> KVCaches:
    """Per layer ``(key_cache, value_cache)``, each [num_blocks, block_size, kv_heads, head]."""
    shape = (num_blocks, block_size, spec.num_kv_heads, spec.head_size)
    return [(torch.zeros(shape, dtype=dtype, device=device),
             torch.zeros(shape, dtype=dtype, device=device)) for _ in range(spec.num_layers)]


@dataclass
class PromptLogprobsInput:
    """A request whose prompt logprobs this step computes: rows ``first_row ..`` of the batch
    predict prompt positions ``start + 1 ..``; ``targets`` are those prompt tokens."""

    req_id: str
    first_row: int
    start: int
    targets: list[int]
    k: int


@dataclass
class ModelInput:
    """One step's packed batch (no padding) as host arrays: built once from the scheduler's
    output by :func:`prepare_input`, turned into device tensors by every rank."""

    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64
    block_tables: np.ndarray  # [num_reqs, max_blocks] int32
    query_start_loc: list[int]  # [num_reqs + 1]
    seq_lens: list[int]  # [num_reqs]
    max_query_len: int
    sample_rows: list[int]  # the row of each sampling request's last token, in request order
    prompt_logprobs: list[PromptLogprobsInput] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write first


@dataclass
class ModelOutput:
    """What a forward pass gives the sampler: logits of the sampling rows, prompt logprobs."""

    logits: torch.Tensor | None  # [len(sample_rows), vocab] float32; None when none samples
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprobs]]] = field(default_factory=dict)


def prepare_input(scheduled: SchedulerOutput, block_size: int) -> ModelInput:
    """Token ids, positions, slots and block tables of the packed batch."""
    bs = block_size
    query_lens = [s.num_tokens for s in scheduled.scheduled]
    starts = [s.request.num_computed_tokens for s in scheduled.scheduled]
    seq_lens = [start + n for start, n in zip(starts, query_lens)]
    query_start_loc = [0, *np.cumsum(query_lens).tolist()]
    input_ids = np.empty(query_start_loc[-1], dtype=np.int64)
    positions = np.empty(query_start_loc[-1], dtype=np.int64)
    slots = np.empty(query_start_loc[-1], dtype=np.int64)
    max_blocks = max(len(s.block_ids) for s in scheduled.scheduled)
    block_tables = np.zeros((len(query_lens), max_blocks), dtype=np.int32)
    sample_rows, prompt_logprobs = [], []
    for i, item in enumerate(scheduled.scheduled):
        lo, hi = query_start_loc[i], query_start_loc[i + 1]
        request = item.request
        input_ids[lo:hi] = request.token_ids(starts[i], seq_lens[i])
        pos = np.arange(starts[i], seq_lens[i], dtype=np.int64)
        positions[lo:hi] = pos
        table = np.asarray(item.block_ids, dtype=np.int64)
        slots[lo:hi] = table[pos // bs] * bs + pos % bs
        block_tables[i, :len(table)] = table
        if item.samples:
            sample_rows.append(hi - 1)
        k = request.sampling_params.prompt_logprobs
        if k is not None:  # logprobs of the next prompt tokens this chunk predicts
            stop = min(seq_lens[i], request.num_prompt_tokens - 1)
            if stop > starts[i]:
                prompt_logprobs.append(PromptLogprobsInput(
                    request.req_id, lo, starts[i],
                    list(request.prompt_token_ids[starts[i] + 1:stop + 1]), k))
    return ModelInput(input_ids, positions, slots, block_tables, query_start_loc, seq_lens,
                      max(query_lens), sample_rows, prompt_logprobs, scheduled.block_copies)


def sample_output(sampler: Sampler, scheduled: SchedulerOutput,
                  output: ModelOutput) -> RunnerOutput:
    """Sample each sampling request's next token from its logits row (on the driver, where
    the requests, their generators and their token histories live)."""
    result = RunnerOutput(prompt_logprobs=output.prompt_logprobs)
    sampling = [s.request for s in scheduled.scheduled if s.samples]
    if not sampling:
        return result
    sampled = sampler.sample(output.logits, [_row(request) for request in sampling])
    for j, request in enumerate(sampling):
        result.sampled_token_ids[request.req_id] = sampled.token_ids[j]
        if sampled.logprobs[j] is not None:
            result.logprobs[request.req_id] = sampled.logprobs[j]
    return result


def _row(request) -> SamplingRow:
    return SamplingRow(params=request.sampling_params,
                       prompt_token_ids=request.prompt_token_ids,
                       output_token_ids=request.output_token_ids,
                       generator=request.generator,
                       eos_token_ids=request.eos_token_ids)


class ModelRunner(Executor):
    """One rank's model, its KV cache tensors and the forward pass.

    In a single process (``distributed_executor_backend="uni"``) it is the engine's executor
    and samples too; each tensor-parallel worker owns one for its shard and only runs
    :meth:`run`.
    """

    def __init__(self, model: CausalLM, kv_caches: KVCaches, block_size: int,
                 device: torch.device) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.sampler = Sampler()

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def dtype(self) -> torch.dtype:
        return self.model.ctx.dtype

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate shared blocks before a request writes into them."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], dtype=torch.long, device=self.device)
        dst = torch.tensor([d for _, d in copies], dtype=torch.long, device=self.device)
        for key_cache, value_cache in self.kv_caches:
            key_cache[dst] = key_cache[src]
            value_cache[dst] = value_cache[src]

    def execute(self, scheduled: SchedulerOutput) -> RunnerOutput:
        return sample_output(self.sampler, scheduled,
                             self.run(prepare_input(scheduled, self.block_size)))

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        if not array.flags.writeable:  # a read-only view of Ray's object store
            array = array.copy()
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    @torch.inference_mode()
    def run(self, batch: ModelInput) -> ModelOutput:
        """The forward pass: copy-on-write, the model, logits of the sampling rows and prompt
        logprobs (every rank runs it: the model's collectives need them all)."""
        self.copy_blocks(batch.block_copies)
        metadata = AttentionMetadata(
            slot_mapping=self._to_device(batch.slot_mapping),
            query_start_loc=self._to_device(np.asarray(batch.query_start_loc, dtype=np.int32)),
            seq_lens=self._to_device(np.asarray(batch.seq_lens, dtype=np.int32)),
            block_tables=self._to_device(batch.block_tables),
            max_query_len=batch.max_query_len,
            max_seq_len=max(batch.seq_lens),
            query_start_loc_cpu=batch.query_start_loc,
            seq_lens_cpu=batch.seq_lens,
        )
        hidden = self.model(self._to_device(batch.input_ids), self._to_device(batch.positions),
                            self.kv_caches, metadata)  # [T, hidden]
        logits = self.model.compute_logits(hidden[batch.sample_rows]) if batch.sample_rows else None
        output = ModelOutput(logits)
        for item in batch.prompt_logprobs:
            prompt_logits = self.model.compute_logits(
                hidden[item.first_row:item.first_row + len(item.targets)])
            targets = torch.tensor(item.targets, device=prompt_logits.device)
            output.prompt_logprobs[item.req_id] = (
                item.start, compute_prompt_logprobs(prompt_logits, targets, item.k))
        return output
