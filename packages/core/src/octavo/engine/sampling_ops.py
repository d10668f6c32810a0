"""Batched logits processing and sampling: pure tensor functions, one row per request.

Every function works on a ``[num_rows, vocab]`` float tensor and per-row parameter tensors on
the same device; none loops over the vocabulary in Python.
"""

from __future__ import annotations

import torch


def apply_token_bias(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor,
                     values: torch.Tensor) -> torch.Tensor:
    """Add ``values[i]`` to ``logits[rows[i], tokens[i]]`` in place (-inf masks a token)."""
    # rows, tokens: [num_entries] int64; values: [num_entries] float
    return logits.index_put_((rows, tokens), values.to(logits.dtype), accumulate=True)


def token_presence(num_rows: int, vocab_size: int, rows: torch.Tensor,
                   tokens: torch.Tensor) -> torch.Tensor:
    """``[num_rows, vocab]`` occurrence counts of ``tokens[i]`` in row ``rows[i]``."""
    counts = torch.zeros(num_rows, vocab_size, dtype=torch.int32, device=tokens.device)
    ones = torch.ones_like(tokens, dtype=torch.int32)
    return counts.index_put_((rows, tokens), ones, accumulate=True)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: torch.Tensor) -> torch.Tensor:
    """HF semantics: seen tokens' positive logits are divided by the penalty, negative multiplied.

    Args:
        logits: [num_rows, vocab].
        seen: [num_rows, vocab] bool, tokens present in the prompt or output.
        penalty: [num_rows] float (> 0; 1 leaves a row unchanged).
    """
    penalty = penalty.unsqueeze(1)  # [num_rows, 1]
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_presence_frequency(logits: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor,
                             frequency: torch.Tensor) -> torch.Tensor:
    """OpenAI semantics: ``logit -= count * frequency + (count > 0) * presence``.

    Args:
        logits: [num_rows, vocab].
        counts: [num_rows, vocab] occurrences in the output so far.
        presence, frequency: [num_rows] float.
    """
    counts = counts.to(logits.dtype)
    return (logits - counts * frequency.unsqueeze(1)
            - (counts > 0).to(logits.dtype) * presence.unsqueeze(1))


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None,
                      top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask (-inf) all but the ``top_k`` largest logits, then all outside the ``top_p`` nucleus.

    The nucleus is the smallest set of most likely tokens whose probability (after top-k)
    reaches ``top_p``; the most likely token is always kept. Ties at the cut-off are broken by
    the sort order, so exactly ``k`` tokens survive top-k.

    Args:
        logits: [num_rows, vocab] (temperature already applied).
        top_k: [num_rows] int64, a value >= vocab (or None) keeps every token.
        top_p: [num_rows] float in (0, 1], 1 (or None) keeps every token.
    """
    vocab = logits.shape[1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # both [num_rows, vocab]
    positions = torch.arange(vocab, device=logits.device).unsqueeze(0)  # [1, vocab]
    if top_k is not None:
        drop = positions >= top_k.unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        drop = (mass_before >= top_p.unsqueeze(1)) & (top_p.unsqueeze(1) < 1.0)
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask tokens whose probability is below ``min_p`` times the row's top probability.

    Args:
        logits: [num_rows, vocab] (temperature already applied).
        min_p: [num_rows] float in [0, 1]; 0 keeps every token.
    """
    # p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p)   (log(0) = -inf keeps all)
    threshold = logits.amax(dim=-1, keepdim=True) + min_p.unsqueeze(1).log()
    return logits.masked_fill(logits < threshold, float("-inf"))


def row_uniforms(generators: list[torch.Generator | None],
                 device: torch.device) -> torch.Tensor:
    """``[num_rows]`` float64 U[0, 1) samples; a row with a generator draws from it alone.

    Rows without a generator share one draw from the device's default generator, so a seeded
    row's sample never depends on the other rows in the batch.
    """
    uniforms = torch.empty(len(generators), dtype=torch.float64, device=device)
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if unseeded:
        draw = torch.rand(len(unseeded), dtype=torch.float64, device=device)
        uniforms[torch.tensor(unseeded, device=device)] = draw
    for i, generator in enumerate(generators):
        if generator is not None:
            uniforms[i] = torch.rand(1, dtype=torch.float64, device=device,
                                     generator=generator)[0]
    return uniforms


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample one token per row by inverting its cumulative distribution: the first token whose
    cumulative probability exceeds ``u * total``, so token i wins with probability
    ``probs[i] / total`` and a token of probability 0 never does.

    One uniform per row instead of one random number per vocabulary entry (an exponential
    race): on the CPU drawing 49k exponentials per row cost more than the rest of the sampler.
    The cumulative sum runs in float64, so tokens far below float32's resolution of the sum
    keep their share.

    Args:
        probs: [num_rows, vocab], non-negative, each row with a positive sum (masked tokens 0).
        uniforms: [num_rows] float64 in [0, 1).

    Returns:
        [num_rows] int64 token ids.
    """
    cdf = probs.double().cumsum(dim=-1)  # [num_rows, vocab]
    targets = (uniforms * cdf[:, -1]).unsqueeze(1)  # [num_rows, 1], below each row's total
    return torch.searchsorted(cdf, targets, right=True).squeeze(1)


def token_ranks(logprobs: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """Logprob of ``token_ids[i]`` in row i and its 1-based rank (1 + number of likelier tokens).

    Args:
        logprobs: [num_rows, vocab] log-probabilities.
        token_ids: [num_rows] int64.

    Returns:
        ([num_rows] float logprobs, [num_rows] int64 ranks).
    """
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))  # [num_rows, 1]
    ranks = (logprobs > chosen).sum(dim=-1) + 1
    return chosen.squeeze(1), ranks
