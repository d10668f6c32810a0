"""The vectorised sampler: logits processors, greedy / random sampling and logprobs.

Order per step (vLLM's): logit_bias, min_tokens, repetition penalty, presence/frequency
penalties; greedy rows then take the argmax, the others apply temperature, top-k, top-p and
min-p and sample by inverting each row's cumulative distribution. Logprobs always describe the
raw model distribution (``log_softmax`` of the logits as given), as vLLM does by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from octavo.engine import sampling_ops as ops
from octavo.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    """One request that samples a token this step."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    generator: torch.Generator | None = None  # on the logits' device; None: default generator
    eos_token_ids: frozenset[int] = frozenset()


@dataclass
class TokenLogprobs:
    """Logprob and 1-based rank of one chosen token, with the top-k alternatives.

    ``top`` holds ``(token_id, logprob, rank)`` for the k most likely tokens, best first
    (empty when k = 0).
    """

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float, int]]


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # None where the row did not ask for logprobs


class Sampler:
    """Samples one token per row of a ``[num_rows, vocab]`` logits tensor."""

    def sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        """Process the logits of each row with its parameters and sample.

        Args:
            logits: [num_rows, vocab] (converted to float32), not modified.
            rows: the requests, in row order.
        """
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [len(rows)={len(rows)}, vocab], "
                             f"got {tuple(logits.shape)}")
        logits = logits.float()
        processed = self.process_logits(logits, rows)
        tokens = processed.argmax(dim=-1)  # [num_rows]; final for greedy rows
        random_rows = [i for i, row in enumerate(rows) if not row.params.greedy]
        if random_rows:
            index = torch.tensor(random_rows, device=logits.device)
            chosen = [rows[i] for i in random_rows]
            probs = self.filter_logits(processed[index], chosen).softmax(dim=-1)
            uniforms = ops.row_uniforms([row.generator for row in chosen], logits.device)
            tokens[index] = ops.sample_inverse_cdf(probs, uniforms)
        logprobs: list[TokenLogprobs | None] = [None] * len(rows)
        wanted = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
        if wanted:
            index = torch.tensor(wanted, device=logits.device)
            entries = gather_logprobs(logits[index].log_softmax(dim=-1), tokens[index],
                                      [rows[i].params.logprobs for i in wanted])
            for i, entry in zip(wanted, entries):
                logprobs[i] = entry
        return SamplerOutput(token_ids=tokens.tolist(), logprobs=logprobs)

    __call__ = sample

    def process_logits(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """``logits`` [num_rows, vocab] after logit_bias, min_tokens masking, repetition
        penalty, presence and frequency penalties, in that order: a processed copy, or
        ``logits`` itself when no row asks for any of them (never modified in place)."""
        vocab = logits.shape[1]
        biases = _logit_bias_entries(rows, vocab) + _min_tokens_entries(rows, vocab)
        if not biases and not any(_repetition_penalized(row) or _presence_frequency_penalized(row)
                                  for row in rows):
            return logits  # greedy decoding's usual case: no copy of a [rows, vocab] tensor
        logits = logits.clone()
        if biases:
            row_ids, token_ids, values = zip(*biases)
            ops.apply_token_bias(logits, _long(row_ids, logits.device),
                                 _long(token_ids, logits.device),
                                 torch.tensor(values, device=logits.device))
        self._apply_repetition_penalty(logits, rows)
        self._apply_presence_frequency(logits, rows)
        return logits

    def _apply_repetition_penalty(self, logits: torch.Tensor, rows: list[SamplingRow]) -> None:
        """Scale the logits of every token seen in the prompt or output (in place)."""
        rep = [i for i, row in enumerate(rows) if _repetition_penalized(row)]
        if not rep:
            return
        device = logits.device
        seen = self._counts([(rows[i].prompt_token_ids, rows[i].output_token_ids)
                             for i in rep], logits.shape[1], device) > 0
        penalty = torch.tensor([rows[i].params.repetition_penalty for i in rep], device=device)
        index = _long(rep, device)
        logits[index] = ops.apply_repetition_penalty(logits[index], seen, penalty)

    def _apply_presence_frequency(self, logits: torch.Tensor, rows: list[SamplingRow]) -> None:
        """Subtract the presence and frequency penalties of output tokens (in place)."""
        pf = [i for i, row in enumerate(rows) if _presence_frequency_penalized(row)]
        if not pf:
            return
        device = logits.device
        counts = self._counts([(rows[i].output_token_ids,) for i in pf], logits.shape[1], device)
        presence = torch.tensor([rows[i].params.presence_penalty for i in pf], device=device)
        frequency = torch.tensor([rows[i].params.frequency_penalty for i in pf], device=device)
        index = _long(pf, device)
        logits[index] = ops.apply_presence_frequency(logits[index], counts, presence, frequency)

    @staticmethod
    def _counts(token_lists: list[tuple[Sequence[int], ...]], vocab: int,
                device: torch.device) -> torch.Tensor:
        """[len(token_lists), vocab] counts of the tokens in each row's sequences."""
        parts, row_ids = [], []
        for i, sequences in enumerate(token_lists):
            for seq in sequences:
                ids = torch.as_tensor(seq, dtype=torch.long).flatten().cpu()
                parts.append(ids)
                row_ids.append(torch.full_like(ids, i))
        tokens = torch.cat(parts).to(device)
        rows = torch.cat(row_ids).to(device)
        return ops.token_presence(len(token_lists), vocab, rows, tokens)

    @staticmethod
    def filter_logits(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Temperature, then top-k, top-p and min-p masking (-inf) of non-greedy rows' logits.

        Args:
            logits: [num_rows, vocab] processed logits; not modified.
        """
        vocab = logits.shape[1]
        device = logits.device
        temperature = torch.tensor([row.params.temperature for row in rows], device=device)
        logits = logits / temperature.unsqueeze(1)
        top_k = [row.params.top_k or vocab for row in rows]
        top_p = [row.params.top_p for row in rows]
        use_k, use_p = min(top_k) < vocab, min(top_p) < 1.0
        if use_k or use_p:
            logits = ops.apply_top_k_top_p(
                logits, _long(top_k, device) if use_k else None,
                torch.tensor(top_p, device=device) if use_p else None)
        min_p = [row.params.min_p for row in rows]
        if max(min_p) > 0.0:
            logits = ops.apply_min_p(logits, torch.tensor(min_p, device=device))
        return logits


def compute_prompt_logprobs(logits: torch.Tensor, target_token_ids: torch.Tensor | Sequence[int],
                            k: int) -> list[TokenLogprobs]:
    """Logprob and rank of each actual next prompt token, with the top-k alternatives.

    Args:
        logits: [q, vocab] raw logits at q consecutive prompt positions.
        target_token_ids: [q] the prompt token that follows each position.
        k: number of alternatives per position (0: only the actual token).
    """
    targets = torch.as_tensor(target_token_ids, dtype=torch.long, device=logits.device)
    return gather_logprobs(logits.float().log_softmax(dim=-1), targets, [k] * len(targets))


def gather_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor,
                    top_ks: list[int]) -> list[TokenLogprobs]:
    """One ``TokenLogprobs`` per row of ``logprobs`` [num_rows, vocab] for ``token_ids`` [rows]."""
    if not top_ks:
        return []
    chosen, ranks = ops.token_ranks(logprobs, token_ids)
    max_k = min(max(top_ks), logprobs.shape[1])
    top_ids, top_values, top_ranks = [], [], []
    if max_k > 0:
        values, ids = logprobs.topk(max_k, dim=-1)  # [num_rows, max_k]
        # Every token likelier than a top-k entry is itself in the top k.
        ranks_in_top = (values.unsqueeze(1) > values.unsqueeze(2)).sum(dim=-1) + 1
        top_ids, top_values, top_ranks = ids.tolist(), values.tolist(), ranks_in_top.tolist()
    result = []
    for i, (token, logprob, rank, k) in enumerate(zip(token_ids.tolist(), chosen.tolist(),
                                                      ranks.tolist(), top_ks)):
        top = (list(zip(top_ids[i][:k], top_values[i][:k], top_ranks[i][:k]))
               if max_k > 0 else [])
        result.append(TokenLogprobs(token, logprob, rank, top))
    return result


def _logit_bias_entries(rows: list[SamplingRow], vocab: int) -> list[tuple[int, int, float]]:
    """``(row, token, bias)`` for every ``logit_bias`` entry; a token outside the vocabulary
    is an error."""
    entries = []
    for i, row in enumerate(rows):
        for token, value in (row.params.logit_bias or {}).items():
            if token >= vocab:
                raise ValueError(f"logit_bias token id {token} is outside the vocabulary "
                                 f"(size {vocab})")
            entries.append((i, token, value))
    return entries


def _min_tokens_entries(rows: list[SamplingRow], vocab: int) -> list[tuple[int, int, float]]:
    """``(row, token, -inf)`` banning EOS and stop tokens until a row has ``min_tokens``
    outputs, whether or not ``ignore_eos`` is set (as vLLM, and HF's ``min_new_tokens``)."""
    entries = []
    for i, row in enumerate(rows):
        params = row.params
        if len(row.output_token_ids) >= params.min_tokens:
            continue
        banned = set(params.stop_token_ids) | row.eos_token_ids
        entries += [(i, token, float("-inf")) for token in banned if token < vocab]
    return entries


def _repetition_penalized(row: SamplingRow) -> bool:
    return row.params.repetition_penalty != 1.0


def _presence_frequency_penalized(row: SamplingRow) -> bool:
    """Presence and frequency penalties count output tokens: none before the first."""
    params = row.params
    return bool(row.output_token_ids) and (params.presence_penalty != 0.0
                                           or params.frequency_penalty != 0.0)


def _long(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)
