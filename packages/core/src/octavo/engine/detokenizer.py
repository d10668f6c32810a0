"""Incremental detokenization with stop strings.

Each step decodes only a short window of trailing tokens: ``tokens[prefix_offset:]`` against
``tokens[prefix_offset:read_offset]`` (text already emitted, kept as context for decoders whose
output depends on the previous token, such as sentencepiece's leading-space handling). The
difference is the new text. Text stays tentative (in ``output_text`` but not yet streamed) while
it ends in an incomplete UTF-8 sequence (U+FFFD) or while the last token is a byte-fallback token
(``<0xE4>``), whose byte group a later byte token could still change.

Stop strings are searched only in the text that each step adds (plus the longest stop string's
length of overlap); the streamed deltas hold back any tail that could start a stop string, so a
stream never shows text that a later stop-string match removes.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Sequence
from typing import Any

from octavo.sampling_params import SamplingParams

PROMPT_CONTEXT_TOKENS = 6  # prompt tokens decoded in front of the output, as context
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_BYTE_TOKEN_IDS: weakref.WeakKeyDictionary[Any, frozenset[int]] = weakref.WeakKeyDictionary()
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns one sequence's output tokens into text, step by step, and finds stop strings.

    Args:
        tokenizer: A Hugging Face tokenizer (``decode``, ``get_vocab``).
        prompt_token_ids: The prompt; its last few tokens give the decoder context.
        params: ``stop``, ``include_stop_str_in_output``, ``skip_special_tokens`` and
            ``min_tokens`` (stop strings are not matched before that many output tokens,
            as in vLLM) are used.
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int],
                 params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.output_token_ids: list[int] = []
        self.stop_reason: str | None = None  # the stop string that ended the text
        self._skip_special = params.skip_special_tokens
        self._decode_ids = _fast_decoder(tokenizer)
        self._special_ids = _special_ids(tokenizer) if self._skip_special else frozenset()
        self._byte_ids = byte_token_ids(tokenizer)
        self._stops = list(params.stop or ())
        self._text = ""  # final text, streamed up to the stop-string hold-back
        self._pending = ""  # tentative text after _text (incomplete character)
        self._num_returned = 0  # characters of _text returned by get_next_delta
        self._num_searched = 0  # len(_text) when stop strings were last searched

        context = [int(t) for t in prompt_token_ids[-PROMPT_CONTEXT_TOKENS:]]
        while context and context[-1] in self._byte_ids:  # keep output byte groups separate
            context.pop()
        context_text = self._decode(context)
        if context_text.endswith(_REPLACEMENT):
            context, context_text = [], ""
        self._tokens = context  # context + output tokens that make text
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._prefix_text = context_text  # decode(_tokens[_prefix_offset:_read_offset])

    @property
    def output_text(self) -> str:
        """All the text so far (after a stop string matched: up to it, or through it)."""
        return self._text + self._pending

    @property
    def finished(self) -> bool:
        """True once a stop string has matched."""
        return self.stop_reason is not None

    def update(self, new_token_ids: Sequence[int], stop_terminated: bool = False) -> str | None:
        """Append new output tokens; return the stop string if one now occurs in the text.

        Args:
            new_token_ids: Tokens sampled since the previous call.
            stop_terminated: The last token is an EOS / stop token that ends the sequence; its
                text is left out unless ``include_stop_str_in_output`` (vLLM's behaviour).

        After a match ``output_text`` ends before the stop string (or after it with
        ``include_stop_str_in_output``) and later calls change nothing.
        """
        if self.stop_reason is not None:
            return None
        new_token_ids = [int(t) for t in new_token_ids]
        self.output_token_ids.extend(new_token_ids)
        if stop_terminated and new_token_ids and not self.params.include_stop_str_in_output:
            new_token_ids.pop()
        if new_token_ids:
            self._tokens.extend(new_token_ids)
            self._decode_window()
        return self._check_stop_strings()

    def get_next_delta(self, finished: bool = False) -> str:
        """Text not returned before; holds back an incomplete last character and any tail
        that could start a stop string, unless ``finished`` (or a stop string matched).

        ``finished=True`` flushes everything, tentative text included; call it last.
        """
        text = self.output_text
        if finished or self.stop_reason is not None:
            end = len(text)
        else:
            end = len(self._text) - self._stop_prefix_length()
        delta = text[self._num_returned:end]
        self._num_returned = max(self._num_returned, end)
        return delta

    def _decode(self, token_ids: list[int]) -> str:
        return self._decode_ids(token_ids, skip_special_tokens=self._skip_special)

    def _decode_window(self) -> None:
        """Decode the trailing window; commit its new text once it is complete."""
        window_text = self._decode(self._tokens[self._prefix_offset:])
        new_text = window_text[len(self._prefix_text):]
        if window_text.endswith(_REPLACEMENT) or self._byte_group_open():
            self._pending = new_text
            return
        self._pending = ""
        if not new_text:  # e.g. a skipped special token: keep the window's context
            return
        self._text += new_text
        self._prefix_offset, self._read_offset = self._read_offset, len(self._tokens)
        self._prefix_text = self._decode(self._tokens[self._prefix_offset:self._read_offset])

    def _byte_group_open(self) -> bool:
        """Whether the last token that reaches the decoder is a byte-fallback token."""
        if not self._byte_ids:
            return False
        for i in range(len(self._tokens) - 1, self._prefix_offset - 1, -1):
            token = self._tokens[i]
            if token not in self._special_ids:  # only skipped specials are in this set
                return token in self._byte_ids
        return False

    def _check_stop_strings(self) -> str | None:
        """Find the stop string that ends first among the text added since the last search."""
        searched, self._num_searched = self._num_searched, len(self._text)
        if not self._stops or len(self.output_token_ids) < self.params.min_tokens:
            return None
        text = self.output_text
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            # A new match ends after `searched`: earlier ones were found (or ignored) before.
            start = text.find(stop, max(0, searched - len(stop) + 1))
            if start != -1 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        if best is None:
            return None
        end, start, stop = best
        self._text = text[:end if self.params.include_stop_str_in_output else start]
        self._pending = ""
        self.stop_reason = stop
        return stop

    def _stop_prefix_length(self) -> int:
        """Length of the longest end of the final text that is a proper prefix of a stop."""
        longest = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:k]):
                    longest = k
                    break
        return longest


def byte_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of byte-fallback tokens (``<0x00>`` .. ``<0xFF>`` that decode to raw bytes)."""
    try:
        return _BYTE_TOKEN_IDS[tokenizer]
    except (KeyError, TypeError):
        pass
    ids = frozenset(
        token_id for token, token_id in tokenizer.get_vocab().items()
        if _BYTE_TOKEN.fullmatch(token) and tokenizer.decode([token_id]) != token)
    with contextlib.suppress(TypeError):  # not weak-referenceable or hashable: no cache
        _BYTE_TOKEN_IDS[tokenizer] = ids
    return ids


def _fast_decoder(tokenizer: Any):
    """``tokenizer.decode``, or the Rust tokenizer's own when that is all it would do."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return tokenizer.decode
    cls = type(tokenizer)
    if (isinstance(tokenizer, PreTrainedTokenizerFast)
            and cls.decode is PreTrainedTokenizerFast.decode
            and cls._decode is PreTrainedTokenizerFast._decode
            and not getattr(tokenizer, "clean_up_tokenization_spaces", True)):
        return tokenizer.backend_tokenizer.decode
    return tokenizer.decode


def _special_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that ``decode(..., skip_special_tokens=True)`` leaves out."""
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(token_id)
    return frozenset(ids)
