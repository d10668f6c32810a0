"""One timed pass of a batch, and each request's TTFT and TPOT from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchTiming:
    """One pass of a batch, in seconds.

    ``prefill`` runs from the pass start until every request has its first token;
    ``decode_steps`` are the durations of the later steps. ``first_token`` and ``last_token``
    hold, per request in batch order, the time of its first and of its last token, counted
    from the pass start.
    """

    prefill: float
    decode_steps: list[float]
    first_token: list[float]
    last_token: list[float]

    @classmethod
    def from_token_stamps(cls, start: float, stamps: Sequence[float],
                          output_lens: Sequence[int]) -> BatchTiming:
        """A padded static batch (HF ``generate``) that stamped the clock at each generated
        token: every row gets a token at every stamp, so request ``i``'s first token comes at
        ``stamps[0]`` and its last at ``stamps[output_lens[i] - 1]``."""
        if len(stamps) < max(output_lens):
            raise ValueError(f"{len(stamps)} token stamps for a request of "
                             f"{max(output_lens)} tokens")
        return cls(stamps[0] - start, [b - a for a, b in zip(stamps, stamps[1:])],
                   [stamps[0] - start] * len(output_lens),
                   [stamps[n - 1] - start for n in output_lens])


def request_latencies(timing: BatchTiming, output_lens: Sequence[int]
                      ) -> tuple[list[float], list[float]]:
    """Each request's time to first token, and its time per output token after the first:
    ``(last - first) / (output_len - 1)``; a request of one token has no TPOT."""
    ttft = list(timing.first_token)
    tpot = [(last - first) / (n - 1)
            for first, last, n in zip(timing.first_token, timing.last_token, output_lens)
            if n > 1]
    return ttft, tpot
