"""Seeded synthetic workloads: random-token prompts with set input and output lengths.

Prompts are random token ids (special tokens excluded), so no tokenizer round trip changes
their length and every engine sees exactly the same ids. Output lengths are exact: requests
ignore EOS, so every engine generates the same number of tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

# The "chat" mix of issue 7: input 16-1024 tokens, output 16-512, drawn from a fixed seed.
CHAT_INPUT_RANGE = (16, 1024)
CHAT_OUTPUT_RANGE = (16, 512)
WORKLOADS = ("random", "chat")


@dataclass(frozen=True)
class BenchRequest:
    """One request: its prompt token ids and exactly how many tokens to generate."""

    prompt_token_ids: tuple[int, ...]
    output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.output_len


def make_workload(name: str, num_requests: int, vocab_size: int, *, seed: int = 0,
                  input_len: int = 128, output_len: int = 128,
                  exclude_token_ids: Iterable[int] = ()) -> list[BenchRequest]:
    """``num_requests`` requests of workload ``name``.

    ``random``: every prompt has ``input_len`` tokens and asks for ``output_len``.
    ``chat``: input lengths uniform in 16-1024 and output lengths in 16-512 (input_len and
    output_len are ignored).

    Raises:
        ValueError: an unknown workload or a non-positive size.
    """
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")
    for label, value in (("num_requests", num_requests), ("input_len", input_len),
                         ("output_len", output_len)):
        if value <= 0:
            raise ValueError(f"{label} must be positive, got {value}")
    excluded = set(exclude_token_ids)
    token_pool = [t for t in range(vocab_size) if t not in excluded]
    if not token_pool:
        raise ValueError(f"no token ids left to draw from (vocab_size={vocab_size})")
    rng = random.Random(seed)
    requests = []
    for _ in range(num_requests):
        if name == "chat":
            n_in, n_out = rng.randint(*CHAT_INPUT_RANGE), rng.randint(*CHAT_OUTPUT_RANGE)
        else:
            n_in, n_out = input_len, output_len
        prompt = tuple(rng.choice(token_pool) for _ in range(n_in))
        requests.append(BenchRequest(prompt, n_out))
    return requests


def workload_totals(requests: list[BenchRequest]) -> dict[str, int]:
    """Prompt, output and total token counts of a workload."""
    prompt = sum(r.prompt_len for r in requests)
    output = sum(r.output_len for r in requests)
    return {"num_requests": len(requests), "prompt_tokens": prompt, "output_tokens": output,
            "total_tokens": prompt + output}
