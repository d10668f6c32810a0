"""Turns a user prompt into validated token ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PromptType = str | Sequence[int] | dict[str, Any]


class InputProcessor:
    def __init__(self, tokenizer, vocab_size: int, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len

    def process(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """Return ``(prompt_text, prompt_token_ids)``; raise ValueError on bad input.

        A prompt is a string, a list of token ids, or ``{"prompt": str}`` /
        ``{"prompt_token_ids": [...]}``.
        """
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                prompt = prompt["prompt_token_ids"]
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty")
            text, token_ids = prompt, list(self.tokenizer(prompt).input_ids)
        elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes):
            text, token_ids = None, list(prompt)
            bad = [t for t in token_ids
                   if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt token ids must be ints in [0, {self.vocab_size}); "
                                 f"got {bad[:5]}")
        else:
            raise ValueError(f"a prompt must be a string or a list of token ids, not "
                             f"{type(prompt).__name__}")
        if not token_ids:
            raise ValueError("the prompt is empty")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt has {len(token_ids)} tokens; this model's context is "
                f"{self.max_model_len} tokens, which leaves no room to generate")
        return text, token_ids
