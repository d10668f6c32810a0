"""``LLM``: offline batch generation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from octavo.config import CacheSettings, ModelSettings, ParallelSettings, SchedulerSettings
from octavo.engine.builder import EngineConfig
from octavo.engine.input_processor import PromptType
from octavo.engine.llm_engine import LLMEngine
from octavo.outputs import RequestOutput
from octavo.sampling_params import SamplingParams

_MODEL_FIELDS = set(ModelSettings.model_fields)
_CACHE_FIELDS = set(CacheSettings.model_fields)
_SCHEDULER_FIELDS = set(SchedulerSettings.model_fields)
_PARALLEL_FIELDS = set(ParallelSettings.model_fields)


def engine_config_from_kwargs(model: str | None = None, **kwargs: Any) -> EngineConfig:
    """Split flat keyword arguments (``block_size=32``) over the settings models."""
    unknown = set(kwargs) - _MODEL_FIELDS - _CACHE_FIELDS - _SCHEDULER_FIELDS - _PARALLEL_FIELDS
    if unknown:
        raise TypeError(f"unknown engine options: {sorted(unknown)}")

    def pick(fields: set[str]) -> dict[str, Any]:
        return {k: v for k, v in kwargs.items() if k in fields}

    return EngineConfig(
        model=ModelSettings(model=model, **pick(_MODEL_FIELDS - {"model"})),
        cache=CacheSettings(**pick(_CACHE_FIELDS)),
        scheduler=SchedulerSettings(**pick(_SCHEDULER_FIELDS)),
        parallel=ParallelSettings(**pick(_PARALLEL_FIELDS)),
    )


class LLM:
    """Generate from a model in-process.

    ``LLM()`` loads the bundled demo SmolLM2-135M-Instruct. Engine options are the fields of
    ``ModelSettings``, ``CacheSettings``, ``SchedulerSettings`` and ``ParallelSettings``
    (``LLM(model, block_size=32, tensor_parallel_size=2)``); or pass a ready ``engine``
    assembled in code.
    """

    def __init__(self, model: str | None = None, *, engine: LLMEngine | None = None,
                 **kwargs: Any) -> None:
        self.engine = engine or LLMEngine.from_config(engine_config_from_kwargs(model, **kwargs))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool | None = None,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; results come back in input order.

        A single prompt may be a string, a list of token ids or a dict; a list of those is a
        batch. Invalid input raises ValueError before anything runs.
        """
        prompt_list = _as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_list = ([sampling_params] * len(prompt_list)
                       if isinstance(sampling_params, SamplingParams) else list(sampling_params))
        if len(params_list) != len(prompt_list):
            raise ValueError(f"{len(prompt_list)} prompts but {len(params_list)} sampling params")
        if priority is not None and len(priority) != len(prompt_list):
            raise ValueError(f"{len(prompt_list)} prompts but {len(priority)} priorities")
        request_ids = []
        try:
            for i, (prompt, params) in enumerate(zip(prompt_list, params_list)):
                request_id = self.engine.next_request_id()
                self.engine.add_request(request_id, prompt, params,
                                        priority=priority[i] if priority else 0)
                request_ids.append(request_id)
        except Exception:
            for request_id in request_ids:  # leave the engine as it was
                self.engine.abort_request(request_id)
            raise
        return self._run(request_ids, use_tqdm)

    def chat(self, messages: list[dict[str, str]] | Sequence[list[dict[str, str]]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             add_generation_prompt: bool = True, use_tqdm: bool | None = None,
             chat_template: str | None = None) -> list[RequestOutput]:
        """Generate replies to conversations, formatted with the tokenizer's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.apply_chat_template(c, add_generation_prompt, chat_template)
                   for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                            chat_template: str | None = None) -> list[int]:
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        if chat_template is None and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template; pass chat_template=")
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True,
            chat_template=chat_template)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def reset_prefix_cache(self) -> None:
        """Forget the cached prompt prefixes (as vLLM's ``LLM.reset_prefix_cache``); raises
        RuntimeError while requests are in flight."""
        self.engine.reset_prefix_cache()

    def _run(self, request_ids: list[str], use_tqdm: bool | None) -> list[RequestOutput]:
        pending = set(request_ids)
        finished: dict[str, RequestOutput] = {}
        show = use_tqdm if use_tqdm is not None else len(request_ids) >= 16
        bar = tqdm(total=len(request_ids), desc="Generating", disable=not show, unit="req")
        try:
            while pending:
                for output in self.engine.step():
                    if output.finished and output.request_id in pending:
                        finished[output.request_id] = output
                        pending.discard(output.request_id)
                        bar.update(1)
                if pending and not self.engine.has_unfinished_requests():
                    raise RuntimeError(f"requests {sorted(pending)} were lost by the engine")
        except BaseException:
            for request_id in pending:
                self.engine.abort_request(request_id)
            raise
        finally:
            bar.close()
        return [finished[request_id] for request_id in request_ids]


def _as_prompt_list(prompts) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(p, int) and not isinstance(p, bool) for p in prompts):
        return [prompts]  # one prompt of token ids
    if not prompts:
        raise ValueError("no prompts given")
    return prompts
