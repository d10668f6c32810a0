"""Runs the model on one packed batch (no padding) and samples."""

from __future__ import annotations

import numpy as np
import torch

from octavo.attention.base import AttentionMetadata
from octavo.engine.outputs import RunnerOutput, SchedulerOutput
from octavo.engine.sampler import Sampler, SamplingRow, compute_prompt_logprobs
from octavo.modeling import CausalLM, KVCaches, KVCacheSpec


def allocate_kv_caches(spec: KVCacheSpec, num_blocks: int, block_size: int,
                       dtype: torch.dtype, device: torch.device) -> KVCaches:
    """Per layer ``(key_cache, value_cache)``, each [num_blocks, block_size, kv_heads, head]."""
    shape = (num_blocks, block_size, spec.num_kv_heads, spec.head_size)
    return [(torch.zeros(shape, dtype=dtype, device=device),
             torch.zeros(shape, dtype=dtype, device=device)) for _ in range(spec.num_layers)]


class ModelRunner:
    """Owns the model, its KV cache tensors and the sampler."""

    def __init__(self, model: CausalLM, kv_caches: KVCaches, block_size: int,
                 device: torch.device) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.sampler = Sampler()

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate shared blocks before a request writes into them."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], dtype=torch.long, device=self.device)
        dst = torch.tensor([d for _, d in copies], dtype=torch.long, device=self.device)
        for key_cache, value_cache in self.kv_caches:
            key_cache[dst] = key_cache[src]
            value_cache[dst] = value_cache[src]

    def build_batch(self, scheduled: SchedulerOutput):
        """Token ids, positions and attention metadata of the packed batch."""
        bs = self.block_size
        query_lens = [s.num_tokens for s in scheduled.scheduled]
        starts = [s.request.num_computed_tokens for s in scheduled.scheduled]
        seq_lens = [start + n for start, n in zip(starts, query_lens)]
        query_start_loc = [0, *np.cumsum(query_lens).tolist()]
        input_ids = np.empty(query_start_loc[-1], dtype=np.int64)
        positions = np.empty(query_start_loc[-1], dtype=np.int64)
        slots = np.empty(query_start_loc[-1], dtype=np.int64)
        max_blocks = max(len(s.block_ids) for s in scheduled.scheduled)
        block_tables = np.zeros((len(query_lens), max_blocks), dtype=np.int32)
        for i, item in enumerate(scheduled.scheduled):
            lo, hi = query_start_loc[i], query_start_loc[i + 1]
            tokens = item.request.token_ids(starts[i], seq_lens[i])
            input_ids[lo:hi] = tokens
            pos = np.arange(starts[i], seq_lens[i], dtype=np.int64)
            positions[lo:hi] = pos
            table = np.asarray(item.block_ids, dtype=np.int64)
            slots[lo:hi] = table[pos // bs] * bs + pos % bs
            block_tables[i, :len(table)] = table

        def to_device(array: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(array)
            if self.device.type == "cuda":
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            return tensor

        metadata = AttentionMetadata(
            slot_mapping=to_device(slots),
            query_start_loc=to_device(np.asarray(query_start_loc, dtype=np.int32)),
            seq_lens=to_device(np.asarray(seq_lens, dtype=np.int32)),
            block_tables=to_device(block_tables),
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=query_start_loc,
            seq_lens_cpu=seq_lens,
        )
        return to_device(input_ids), to_device(positions), metadata

    @torch.inference_mode()
    def execute(self, scheduled: SchedulerOutput) -> RunnerOutput:
        self.copy_blocks(scheduled.block_copies)
        input_ids, positions, metadata = self.build_batch(scheduled)
        hidden = self.model(input_ids, positions, self.kv_caches, metadata)  # [T, hidden]
        result = RunnerOutput()
        ends = metadata.query_start_loc_cpu[1:]
        sampling = [i for i, s in enumerate(scheduled.scheduled) if s.samples]
        if sampling:
            logits = self.model.compute_logits(hidden[[ends[i] - 1 for i in sampling]])
            rows = [self._row(scheduled.scheduled[i].request) for i in sampling]
            sampled = self.sampler.sample(logits, rows)
            for j, i in enumerate(sampling):
                req_id = scheduled.scheduled[i].request.req_id
                result.sampled_token_ids[req_id] = sampled.token_ids[j]
                if sampled.logprobs[j] is not None:
                    result.logprobs[req_id] = sampled.logprobs[j]
        for i, item in enumerate(scheduled.scheduled):
            k = item.request.sampling_params.prompt_logprobs
            if k is not None:
                self._prompt_logprobs(result, item, hidden, ends[i] - item.num_tokens, k)
        return result

    def _prompt_logprobs(self, result, item, hidden, lo, k) -> None:
        """Logprobs of each next prompt token predicted inside this chunk."""
        request = item.request
        start = request.num_computed_tokens
        stop = min(start + item.num_tokens, request.num_prompt_tokens - 1)
        if stop <= start:
            return
        logits = self.model.compute_logits(hidden[lo:lo + stop - start])
        targets = torch.tensor(request.prompt_token_ids[start + 1:stop + 1], device=logits.device)
        result.prompt_logprobs[request.req_id] = (
            start, compute_prompt_logprobs(logits, targets, k))

    @staticmethod
    def _row(request) -> SamplingRow:
        return SamplingRow(params=request.sampling_params,
                           prompt_token_ids=request.prompt_token_ids,
                           output_token_ids=request.output_token_ids,
                           generator=request.generator,
                           eos_token_ids=request.eos_token_ids)
