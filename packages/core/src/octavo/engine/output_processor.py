"""Engine-core outputs -> user outputs: detokenize, stop strings, logprobs, n > 1 grouping."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from octavo.engine.detokenizer import IncrementalDetokenizer
from octavo.engine.outputs import EngineCoreOutput
from octavo.outputs import (
    CompletionOutput,
    Logprob,
    RequestMetrics,
    RequestOutput,
    TokenLogprobDict,
)
from octavo.request import Request
from octavo.sampling_params import SamplingParams


@dataclass
class _Completion:
    core: Request
    output: CompletionOutput
    detokenizer: IncrementalDetokenizer


@dataclass
class _RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    completions: list[_Completion] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobDict | None] | None = None
    metrics: RequestMetrics | None = None

    @property
    def finished(self) -> bool:
        return all(c.output.finished for c in self.completions)


class OutputProcessor:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._states: dict[str, _RequestState] = {}
        self._by_core_id: dict[str, tuple[_RequestState, _Completion]] = {}

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                    params: SamplingParams, core_requests: list[Request]) -> None:
        state = _RequestState(request_id, prompt, prompt_token_ids, params,
                              metrics=RequestMetrics(arrival_time=core_requests[0].arrival_time,
                                                     num_prompt_tokens=len(prompt_token_ids)))
        if params.prompt_logprobs is not None:
            state.prompt_logprobs = [None] * len(prompt_token_ids)
        for index, core in enumerate(core_requests):
            completion = _Completion(
                core, CompletionOutput(index, logprobs=[] if params.logprobs is not None else None,
                                       cumulative_logprob=0.0 if params.logprobs is not None else None),
                IncrementalDetokenizer(self.tokenizer, prompt_token_ids, core.sampling_params))
            state.completions.append(completion)
            self._by_core_id[core.req_id] = (state, completion)
        self._states[request_id] = state

    def core_ids(self, request_id: str) -> list[str]:
        state = self._states.get(request_id)
        return [c.core.req_id for c in state.completions] if state else []

    def has_request(self, request_id: str) -> bool:
        return request_id in self._states

    def process(self, core_outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Return the updated requests' outputs and the core ids to abort (stop strings)."""
        self._clear_deltas()
        touched: dict[str, _RequestState] = {}
        to_abort = []
        for core_out in core_outputs:
            entry = self._by_core_id.get(core_out.req_id)
            if entry is None:
                continue
            state, completion = entry
            touched[state.request_id] = state
            self._record_prompt_logprobs(state, core_out)
            if completion.output.finished:
                continue
            if self._apply(completion, core_out) and not core_out.finished:
                to_abort.append(core_out.req_id)
        outputs = []
        for state in touched.values():
            outputs.append(self._snapshot(state))
            if state.finished:
                self._forget(state)
        return outputs, to_abort

    def _clear_deltas(self) -> None:
        """Deltas describe one step: start every completion's afresh."""
        for state in self._states.values():
            for completion in state.completions:
                completion.output.delta_text = ""
                completion.output.delta_token_ids = []

    def _record_prompt_logprobs(self, state: _RequestState, core_out: EngineCoreOutput) -> None:
        if core_out.prompt_logprobs and state.prompt_logprobs is not None:
            start, entries = core_out.prompt_logprobs
            for offset, token_logprobs in enumerate(entries):
                state.prompt_logprobs[start + 1 + offset] = self._logprob_dict(token_logprobs)

    def _apply(self, completion: _Completion, core_out: EngineCoreOutput) -> bool:
        """Fold one core output into a completion; True if a stop string finished it."""
        out = completion.output
        out.token_ids.extend(core_out.new_token_ids)
        out.delta_token_ids.extend(core_out.new_token_ids)
        if out.logprobs is not None:
            for token_logprobs in core_out.new_logprobs:
                out.logprobs.append(self._logprob_dict(token_logprobs))
                out.cumulative_logprob += token_logprobs.logprob
        stop_string = None
        if core_out.new_token_ids:  # an EOS or stop token's own text is left out
            stop_string = completion.detokenizer.update(
                core_out.new_token_ids, stop_terminated=core_out.finish_reason == "stop")
        if stop_string is not None:
            out.finish_reason, out.stop_reason = "stop", stop_string
        elif core_out.finished:
            out.finish_reason, out.stop_reason = core_out.finish_reason, core_out.stop_reason
        out.text = completion.detokenizer.output_text
        out.delta_text = completion.detokenizer.get_next_delta(out.finished)
        return stop_string is not None

    def _logprob_dict(self, token_logprobs) -> TokenLogprobDict:
        entries = {token_id: Logprob(logprob, rank)
                   for token_id, logprob, rank in token_logprobs.top}
        entries[token_logprobs.token_id] = Logprob(token_logprobs.logprob, token_logprobs.rank)
        for token_id, logprob in entries.items():
            logprob.decoded_token = self.tokenizer.decode([token_id])
        return entries

    def _snapshot(self, state: _RequestState) -> RequestOutput:
        finished = state.finished
        metrics = state.metrics
        if metrics is not None:
            lead = state.completions[0].core
            metrics.first_scheduled_time = lead.first_scheduled_time
            metrics.first_token_time = min(
                (c.core.first_token_time for c in state.completions if c.core.first_token_time),
                default=None)
            metrics.num_cached_tokens = lead.num_cached_tokens
            metrics.num_generated_tokens = sum(len(c.output.token_ids) for c in state.completions)
            metrics.num_preemptions = sum(c.core.num_preemptions for c in state.completions)
            if finished and metrics.finished_time is None:
                metrics.finished_time = time.monotonic()
        return RequestOutput(
            request_id=state.request_id, prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=[_copy(c.output) for c in state.completions],
            prompt_logprobs=list(state.prompt_logprobs) if state.prompt_logprobs else None,
            finished=finished, metrics=metrics)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Mark every unfinished completion of the request aborted and drop its state."""
        state = self._states.get(request_id)
        if state is None:
            return None
        for completion in state.completions:
            if not completion.output.finished:
                completion.output.finish_reason = "abort"
        output = self._snapshot(state)
        self._forget(state)
        return output

    def _forget(self, state: _RequestState) -> None:
        self._states.pop(state.request_id, None)
        for completion in state.completions:
            self._by_core_id.pop(completion.core.req_id, None)


def _copy(output: CompletionOutput) -> CompletionOutput:
    return CompletionOutput(
        index=output.index, text=output.text, token_ids=list(output.token_ids),
        logprobs=list(output.logprobs) if output.logprobs is not None else None,
        cumulative_logprob=output.cumulative_logprob, finish_reason=output.finish_reason,
        stop_reason=output.stop_reason, delta_text=output.delta_text,
        delta_token_ids=list(output.delta_token_ids))
