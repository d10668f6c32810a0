"""Per-request sampling parameters (vLLM / OpenAI semantics), validated on construction."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_LOGPROBS = 20
MIN_TEMPERATURE = 1e-2  # 0 < temperature < MIN_TEMPERATURE is raised to it (overflow guard)
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


@dataclass
class SamplingParams:
    """How to sample one request's completion(s).

    Every field is checked in ``__post_init__``; a bad value raises ``ValueError`` naming the
    field. Some fields are normalised: ``stop`` and ``stop_token_ids`` become lists,
    ``top_k=-1`` becomes 0 (off), ``logit_bias`` keys become ints (OpenAI sends digit strings),
    numbers become floats, and ``0 < temperature < 0.01`` is raised to 0.01.

    Attributes:
        n: Completions to return for the prompt.
        temperature: Softmax temperature; 0 means greedy.
        top_p: Nucleus sampling: keep the smallest set of tokens whose probability reaches it.
        top_k: Keep the k most likely tokens; 0 (or -1) keeps all.
        min_p: Drop tokens whose probability is below ``min_p`` times the top probability.
        repetition_penalty: HF semantics over prompt and output tokens (1 = off).
        presence_penalty: OpenAI semantics over output tokens, in [-2, 2].
        frequency_penalty: OpenAI semantics over output tokens, in [-2, 2].
        logit_bias: Token id -> bias in [-100, 100] added to the logits.
        seed: Seeds the request's own random generator (reproducible sampling).
        max_tokens: Most tokens to generate; None runs until the context ends.
        min_tokens: EOS and stop tokens cannot be sampled, and stop strings do not match,
            before this many tokens (with or without ``ignore_eos``, as vLLM).
        stop: Strings that end the completion (not included unless asked).
        stop_token_ids: Token ids that end the completion.
        ignore_eos: Keep generating after EOS.
        logprobs: Return the sampled token's logprob and this many top alternatives.
        prompt_logprobs: Return this many top alternatives for each prompt token.
        skip_special_tokens: Leave special tokens out of the text.
        include_stop_str_in_output: Keep the matched stop string in the text.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        self.n = _int("n", self.n, low=1)
        self._check_sampling()
        self._check_penalties()
        self._check_lengths()
        self._check_outputs()

    def _check_sampling(self) -> None:
        """temperature, top_p, top_k, min_p and seed."""
        self.temperature = _real("temperature", self.temperature, low=0.0)
        if 0.0 < self.temperature < MIN_TEMPERATURE:
            self.temperature = MIN_TEMPERATURE
        self.top_p = _real("top_p", self.top_p, high=1.0)
        if self.top_p <= 0.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.top_k = _int("top_k", self.top_k)
        if self.top_k < -1:
            raise ValueError(f"top_k must be 0 or -1 (off) or >= 1, got {self.top_k}")
        if self.top_k == -1:
            self.top_k = 0
        self.min_p = _real("min_p", self.min_p, low=0.0, high=1.0)
        if self.seed is not None:
            self.seed = _int("seed", self.seed, low=_SEED_MIN, high=_SEED_MAX)

    def _check_penalties(self) -> None:
        """repetition, presence and frequency penalties, and logit_bias."""
        self.repetition_penalty = _real("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        self.presence_penalty = _real("presence_penalty", self.presence_penalty, -2.0, 2.0)
        self.frequency_penalty = _real("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        self.logit_bias = _logit_bias(self.logit_bias)

    def _check_lengths(self) -> None:
        """max_tokens and min_tokens."""
        if self.max_tokens is not None:
            self.max_tokens = _int("max_tokens", self.max_tokens, low=1)
        self.min_tokens = _int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens ({self.max_tokens}), "
                             f"got {self.min_tokens}")

    def _check_outputs(self) -> None:
        """Stop conditions, flags and logprobs."""
        self.stop = _stop_strings(self.stop)
        self.stop_token_ids = _token_ids("stop_token_ids", self.stop_token_ids)
        for name in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.logprobs is not None:
            self.logprobs = _int("logprobs", self.logprobs, low=0, high=MAX_LOGPROBS)
        if self.prompt_logprobs is not None:
            self.prompt_logprobs = _int("prompt_logprobs", self.prompt_logprobs,
                                        low=0, high=MAX_LOGPROBS)

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature == 0.0 or self.top_k == 1

    def clone_for_child(self, index: int) -> SamplingParams:
        """A copy for the ``index``-th of ``n`` fanned-out sequences: n=1, seed + index."""
        seed = self.seed
        if seed is not None:
            seed = seed + index
            if seed > _SEED_MAX:
                seed -= 2**64
        return dataclasses.replace(
            self, n=1, seed=seed, stop=list(self.stop), stop_token_ids=list(self.stop_token_ids),
            logit_bias=dict(self.logit_bias) if self.logit_bias is not None else None)

    def verify_token_ids(self, vocab_size: int) -> None:
        """Check ``logit_bias`` keys and ``stop_token_ids`` against the model's vocabulary."""
        for name, ids in (("logit_bias", self.logit_bias or ()),
                          ("stop_token_ids", self.stop_token_ids)):
            bad = [i for i in ids if i >= vocab_size]
            if bad:
                raise ValueError(f"{name} has token ids outside the vocabulary "
                                 f"(size {vocab_size}): {bad[:5]}")


def _int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return _in_range(name, int(value), low, high)


def _real(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return _in_range(name, value, low, high)


def _in_range(name: str, value, low, high):
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _logit_bias(bias: Any) -> dict[int, float] | None:
    if bias is None:
        return None
    if not isinstance(bias, Mapping):
        raise ValueError(f"logit_bias must be a dict of token id -> bias, got {bias!r}")
    result: dict[int, float] = {}
    for key, value in bias.items():
        if isinstance(key, str) and key.isascii() and key.isdigit():
            key = int(key)
        elif isinstance(key, bool) or not isinstance(key, numbers.Integral) or key < 0:
            raise ValueError(f"logit_bias keys must be token ids (ints >= 0), got {key!r}")
        result[int(key)] = _real(f"logit_bias[{key}]", value, -100.0, 100.0)
    return result


def _stop_strings(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)):
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
    for item in stop:
        if not isinstance(item, str) or not item:
            raise ValueError(f"stop must hold non-empty strings, got {item!r}")
    return list(stop)


def _token_ids(name: str, ids: Any) -> list[int]:
    if ids is None:
        return []
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"{name} must be a list of token ids, got {ids!r}")
    return [_int(f"{name} item", i, low=0) for i in ids]
