"""Head-of-line blocking: how long short requests wait while a long prompt is prefilled.

One long prompt starts alone; once its first chunk has run, short requests arrive. Reported
per engine setting: the short requests' time to first token (from arrival), the long prompt's
time to first token, and the wall time until everything finished. Chunked prefill only helps
the short requests if the long prompt leaves room in each step's token budget
(``long_prefill_token_threshold``).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

from octavo.sampling_params import SamplingParams


@dataclass(frozen=True)
class InterferenceResult:
    short_ttft_s: list[float]  # each short request, from its arrival
    short_wait_steps: int  # engine steps from the arrival until every short one had a token
    long_ttft_s: float
    total_s: float

    def as_dict(self) -> dict[str, object]:
        return {"short_ttft_p50_s": statistics.median(self.short_ttft_s),
                "short_ttft_max_s": max(self.short_ttft_s),
                "short_wait_steps": self.short_wait_steps, "long_ttft_s": self.long_ttft_s,
                "total_s": self.total_s}


def run_interference(engine, *, long_len: int, short_len: int, num_short: int,
                     vocab_size: int, seed: int = 0) -> InterferenceResult:
    """Run the scenario on an ``LLMEngine`` (greedy, one output token each, EOS ignored)."""
    rng = random.Random(seed)

    def prompt(n: int) -> list[int]:
        return [rng.randrange(10, vocab_size) for _ in range(n)]

    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    start = time.perf_counter()
    engine.add_request("long", prompt(long_len), params)
    first_tokens: dict[str, float] = {}
    _step(engine, first_tokens)  # the long prompt's first chunk
    arrived = time.perf_counter()
    shorts = [f"short-{i}" for i in range(num_short)]
    for request_id in shorts:
        engine.add_request(request_id, prompt(short_len), params)
    steps = 0
    while engine.has_unfinished_requests():
        _step(engine, first_tokens)
        if not all(request_id in first_tokens for request_id in shorts):
            steps += 1
    total = time.perf_counter() - start
    return InterferenceResult(
        short_ttft_s=[first_tokens[request_id] - arrived for request_id in shorts],
        short_wait_steps=steps + 1, long_ttft_s=first_tokens["long"] - start, total_s=total)


def _step(engine, first_tokens: dict[str, float]) -> None:
    for output in engine.step():
        if output.outputs[0].token_ids and output.request_id not in first_tokens:
            first_tokens[output.request_id] = time.perf_counter()
