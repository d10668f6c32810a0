"""The model-manager seam: every request reaches its engine through the ``model`` it names.

One model per server today; lazy loading, eviction and hot swap of several models plug in
here later without touching the routes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

from octavo.engine.stats import EngineStats
from octavo.entrypoints.async_llm import AsyncLLM, RequestStream
from octavo.sampling_params import SamplingParams
from octavo_server.errors import APIError

DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
UNKNOWN_VOCAB_TOKEN_BYTES = 1024  # longer than any real vocabulary entry


@dataclass
class ServedModel:
    """One loaded engine under the name clients use."""

    name: str
    llm: AsyncLLM
    source: str  # what was loaded: a path, a hub id, or the demo's name
    max_waiting_requests: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.llm.info.max_model_len

    def stats(self) -> EngineStats:
        return self.llm.stats()

    @cached_property
    def max_token_bytes(self) -> int:
        """The most UTF-8 bytes of text one token can stand for: its longest vocabulary entry,
        special tokens included (an entry's spelling is never shorter than the text it
        covers: byte-level BPE writes each byte as one character, SentencePiece a space as
        three bytes). A tokenizer that maps unknown text of any length to one unknown token
        is the exception; ``--max-prompt-bytes`` overrides the bound for it."""
        try:
            vocab = self.tokenizer.get_vocab()
        except (AttributeError, NotImplementedError):  # a tokenizer that cannot list it
            return UNKNOWN_VOCAB_TOKEN_BYTES
        return max((len(token.encode("utf-8", "surrogatepass")) for token in vocab), default=1)

    def admit(self, num_sequences: int, param: str) -> None:
        """Check that ``num_sequences`` more sequences fit the waiting queue: 503 while they
        do not, 400 (naming ``param``) if they never can."""
        limit = self.max_waiting_requests
        if limit is None:
            return
        if num_sequences > limit:
            raise APIError(400, f"this request asks for {num_sequences} sequences (prompts "
                           f"times n); the server queues at most {limit}", param=param)
        waiting = self.stats().num_waiting
        if waiting + num_sequences > limit:
            raise APIError(503, f"the server is busy: {waiting} sequences wait and this request "
                           f"adds {num_sequences}, over the limit of {limit}; retry later",
                           code="queue_full")

    def submit(self, prompt_token_ids: list[int], params: SamplingParams,
               priority: int = 0) -> RequestStream:
        """Queue a request (``admit`` it first); ValueError on input the engine refuses."""
        return self.llm.add_request({"prompt_token_ids": prompt_token_ids}, params,
                                    priority=priority)


class ModelManager:
    """Maps served model names to engines; a request without ``model`` goes to the first."""

    def __init__(self, models: list[ServedModel] | None = None) -> None:
        self._models: dict[str, ServedModel] = {}
        for model in models or []:
            self.add(model)

    def add(self, model: ServedModel) -> None:
        if model.name in self._models:
            raise ValueError(f"a model named {model.name!r} is already served")
        self._models[model.name] = model

    def get(self, name: str | None) -> ServedModel:
        if name is None or name == "":
            if not self._models:
                raise APIError(404, "no model is loaded", param="model", code="model_not_found")
            return next(iter(self._models.values()))
        model = self._models.get(name)
        if model is None:
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                           f"{sorted(self._models)}", param="model", code="model_not_found")
        return model

    def __iter__(self):
        return iter(list(self._models.values()))

    async def shutdown(self) -> None:
        """Stop every engine loop (requests still running are aborted by their handlers)."""
        for model in self:
            await model.llm.shutdown()
