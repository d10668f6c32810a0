"""Multi-turn chat: conversations come back for another turn after the device pool has moved
on to other conversations, so their earlier turns' KV blocks were evicted.

Each conversation starts with a user message of ``first_len`` tokens; every turn the model
answers ``output_len`` tokens (greedy, EOS ignored) and the next turn's prompt is the whole
conversation so far plus a new user message of ``user_len`` tokens. Turns run round by round:
turn 1 of every conversation, then turn 2 of every conversation, ... and within a round,
``concurrency`` conversations at a time. A swap tier keeps evicted prefix blocks, so a later
turn computes its new message only; without one it recomputes the whole conversation.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field

from octavo.sampling_params import SamplingParams


@dataclass(frozen=True)
class MultiTurnWorkload:
    num_conversations: int = 32
    num_turns: int = 4
    first_len: int = 256
    user_len: int = 32
    output_len: int = 32
    concurrency: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_conversations", "num_turns", "first_len", "user_len", "output_len",
                     "concurrency"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class MultiTurnResult:
    ttft_s: dict[int, list[float]] = field(default_factory=dict)  # turn -> each request's
    cached_tokens: dict[int, int] = field(default_factory=dict)  # turn -> prompt tokens reused
    prompt_tokens: dict[int, int] = field(default_factory=dict)
    outputs: list[list[int]] = field(default_factory=list)  # every turn's answer, in order
    total_s: float = 0.0
    output_tokens: int = 0

    def as_dict(self) -> dict[str, object]:
        later = [t for turn, ttfts in self.ttft_s.items() if turn > 1 for t in ttfts]
        return {
            "first_turn_ttft_p50_s": statistics.median(self.ttft_s[1]),
            "later_turns_ttft_p50_s": statistics.median(later) if later else None,
            "later_turns_ttft_mean_s": statistics.fmean(later) if later else None,
            "ttft_p50_s_by_turn": {t: statistics.median(v) for t, v in self.ttft_s.items()},
            "cached_fraction_by_turn": {t: self.cached_tokens[t] / self.prompt_tokens[t]
                                        for t in self.prompt_tokens},
            "total_s": self.total_s,
            "output_tokens_per_s": self.output_tokens / self.total_s,
            "total_tokens_per_s": (self.output_tokens + sum(self.prompt_tokens.values()))
            / self.total_s,
        }


def run_multiturn(engine, workload: MultiTurnWorkload, vocab_size: int) -> MultiTurnResult:
    """Run every turn of every conversation on an ``LLMEngine``."""
    rng = random.Random(workload.seed)

    def message(n: int) -> list[int]:
        return [rng.randrange(10, vocab_size) for _ in range(n)]

    histories = [message(workload.first_len) for _ in range(workload.num_conversations)]
    params = SamplingParams(temperature=0, max_tokens=workload.output_len, ignore_eos=True)
    result = MultiTurnResult()
    start = time.perf_counter()
    for turn in range(1, workload.num_turns + 1):
        if turn > 1:
            histories = [h + message(workload.user_len) for h in histories]
        for lo in range(0, len(histories), workload.concurrency):
            wave = {f"t{turn}-c{c}": c for c in range(lo, min(lo + workload.concurrency,
                                                                  len(histories)))}
            answers = _run_wave(engine, wave, histories, params, turn, result)
            for request_id, c in wave.items():
                histories[c] = histories[c] + answers[request_id]
    result.total_s = time.perf_counter() - start
    return result


def _run_wave(engine, wave: dict[str, int], histories: list[list[int]], params,
              turn: int, result: MultiTurnResult) -> dict[str, list[int]]:
    """Submit one wave of requests and step until they finish; record TTFT and reuse."""
    submitted = {}
    for request_id, c in wave.items():
        submitted[request_id] = time.perf_counter()
        engine.add_request(request_id, histories[c], params)
    answers: dict[str, list[int]] = {}
    ttfts = result.ttft_s.setdefault(turn, [])
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.request_id in submitted and output.outputs[0].token_ids:
                ttfts.append(time.perf_counter() - submitted.pop(output.request_id))
            if output.finished:
                answers[output.request_id] = list(output.outputs[0].token_ids)
                result.cached_tokens[turn] = (result.cached_tokens.get(turn, 0)
                                              + output.metrics.num_cached_tokens)
                result.prompt_tokens[turn] = (result.prompt_tokens.get(turn, 0)
                                              + len(output.prompt_token_ids))
    for request_id in wave:
        result.outputs.append(answers[request_id])
        result.output_tokens += len(answers[request_id])
    return answers


TIERS = ("none", "host", "disk")


def default_pool_tokens(workload: MultiTurnWorkload) -> int:
    """A device pool that holds one wave of conversations at their longest (with a quarter to
    spare) but not every conversation's history, so turns come back to evicted prefixes."""
    longest = (workload.first_len + (workload.num_turns - 1) * workload.user_len
               + workload.num_turns * workload.output_len)
    return int(1.25 * workload.concurrency * longest)


def compare_tiers(llm_factory, workload: MultiTurnWorkload, configs: list[tuple[str, str]],
                  tier_gib: float) -> list[dict[str, object]]:
    """One engine per (tier, preemption mode) (tier ``none``: no swap tier), each warmed up
    on other tokens, then the workload; rows with the result, the engine's swap counters and
    whether the greedy tokens match the first row's."""
    rows, reference = [], None
    for tier, mode in configs:
        options = ({"swap_space_gib": 0} if tier == "none"
                   else {"swap_space_gib": tier_gib, "kv_offload": tier})
        llm = llm_factory(preemption_mode=mode, **options)
        vocab = llm.engine.info.vocab_size
        warm = MultiTurnWorkload(num_conversations=2, num_turns=2, first_len=32, user_len=8,
                                 output_len=4, concurrency=2, seed=workload.seed + 1)
        run_multiturn(llm.engine, warm, vocab)
        llm.reset_prefix_cache()
        result = run_multiturn(llm.engine, workload, vocab)
        stats = llm.engine.stats()
        reference = reference if reference is not None else result.outputs
        rows.append({"tier": tier, "preemption_mode": mode, **result.as_dict(),
                     "same_tokens_as_first": result.outputs == reference,
                     "num_kv_blocks": stats.num_kv_blocks,
                     "preemptions_swap": stats.num_preemptions_swap,
                     "preemptions_recompute": stats.num_preemptions_recompute,
                     "swap": vars(stats.swap)})
        del llm
    base = rows[0]["later_turns_ttft_mean_s"]
    for row in rows:
        later = row["later_turns_ttft_mean_s"]
        row["later_ttft_speedup_vs_first"] = base / later if base and later else None
    return rows
