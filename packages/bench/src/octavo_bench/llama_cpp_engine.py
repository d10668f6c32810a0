"""llama.cpp through its low-level API, batched the way its server batches.

llama.cpp's server keeps ``--parallel`` slots, each a sequence with its own ``seq_id`` in one
context of ``n_ctx`` = per-sequence context × slots (``n_seq_max`` = slots). Each step is one
``llama_decode`` of one ``llama_batch``: first the last sampled token of every slot that is
generating, then prompt tokens of the slots still reading their prompts, up to ``n_batch``
tokens, so a long prompt is read in chunks and new prompts are read beside running decodes.
A slot whose request has all its tokens drops its KV and takes the next waiting request
(continuous batching).

Sampling is greedy: the argmax of the logits row of each sequence's last token in the batch.
EOS is ignored; every request gets exactly ``output_len`` tokens, as in the other engines.
The ``llama_cpp`` module is injected (``api``), so tests drive the batching with a fake one.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, NamedTuple

from octavo_bench.engines import Generation, KVUsage, progress_bar
from octavo_bench.workload import BenchRequest

# ggml_log_level values (llama.h): errors are shown, the rest of llama.cpp's log is dropped.
_LOG_ERROR, _LOG_CONT = 4, 5
_GGML_TYPES = {0: "f32", 1: "f16", 30: "bf16"}  # ggml_type values of the KV cache


@dataclass(eq=False)
class SlotSequence:
    """A request in a slot: how many of its tokens the KV cache holds, what it generated."""

    index: int  # the request's position in the workload
    seq_id: int  # the slot
    prompt: tuple[int, ...]
    output_len: int
    n_past: int = 0
    output: list[int] = field(default_factory=list)

    @property
    def reading_prompt(self) -> bool:
        return self.n_past < len(self.prompt)

    @property
    def done(self) -> bool:
        return len(self.output) >= self.output_len


class BatchEntry(NamedTuple):
    """One token of a ``llama_batch``: whose, which, where, and whether to output logits."""

    seq: SlotSequence
    token: int
    pos: int
    logits: bool


def plan_step(running: list[SlotSequence], n_batch: int) -> list[BatchEntry]:
    """The tokens of one ``llama_decode``: the last sampled token of every generating
    sequence, then prompt tokens of the others in slot order until ``n_batch`` tokens."""
    entries = [BatchEntry(seq, seq.output[-1], seq.n_past, True)
               for seq in running if not seq.reading_prompt]
    for seq in running:
        room = n_batch - len(entries)
        if room <= 0:
            break
        if seq.reading_prompt:
            end = min(len(seq.prompt), seq.n_past + room)
            entries += [BatchEntry(seq, seq.prompt[pos], pos, pos == len(seq.prompt) - 1)
                        for pos in range(seq.n_past, end)]
    return entries


class Slots:
    """``num_slots`` sequence slots filled from a queue of requests, in arrival order."""

    def __init__(self, requests: list[BenchRequest], num_slots: int) -> None:
        self.waiting = deque(enumerate(requests))
        self.free_ids = list(range(num_slots))
        self.running: list[SlotSequence] = []
        self.outputs: dict[int, list[int]] = {}

    def admit(self) -> bool:
        """Fill free slots (lowest ``seq_id`` first) with waiting requests; whether any runs."""
        while self.free_ids and self.waiting:
            index, request = self.waiting.popleft()
            self.free_ids.sort()
            self.running.append(SlotSequence(index, self.free_ids.pop(0),
                                             tuple(request.prompt_token_ids), request.output_len))
        self.running.sort(key=lambda seq: seq.seq_id)
        return bool(self.running)

    def release_done(self) -> list[SlotSequence]:
        """Take the finished sequences out of their slots; they are returned."""
        done = [seq for seq in self.running if seq.done]
        for seq in done:
            self.running.remove(seq)
            self.free_ids.append(seq.seq_id)
            self.outputs[seq.index] = seq.output
        return done

    def stored_tokens(self) -> int:
        return sum(seq.n_past for seq in self.running)


_LOG_CALLBACKS: dict[int, Any] = {}  # llama.cpp keeps the pointer: never freed


def quiet_log(api) -> None:
    """Route llama.cpp's log through a callback that shows only its errors."""
    if id(api) in _LOG_CALLBACKS:
        return
    last = [0]

    def log(level: int, text: bytes, _user_data) -> None:
        if level == _LOG_ERROR or (level == _LOG_CONT and last[0] == _LOG_ERROR):
            sys.stderr.write(text.decode("utf-8", "replace"))
        if level != _LOG_CONT:
            last[0] = level

    _LOG_CALLBACKS[id(api)] = callback = api.llama_log_callback(log)
    api.llama_log_set(callback, None)


# The low-level functions the engine calls beyond llama.h's oldest (llama.cpp's memory API).
REQUIRED = ("llama_get_memory", "llama_memory_clear", "llama_memory_seq_rm", "llama_n_ctx_seq",
            "llama_model_load_from_file", "llama_init_from_model", "llama_vocab_n_tokens")


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise RuntimeError("--compare llama.cpp needs llama-cpp-python: "
                           "pip install 'octavo-bench[llama-cpp]'") from exc
    return llama_cpp


@dataclass(eq=False)
class LlamaCppEngine:
    """llama.cpp on a GGUF, ``parallel`` sequences decoded together (see the module doc)."""

    name = "llama.cpp"

    gguf_path: str
    _: KW_ONLY
    threads: int
    parallel: int
    n_ctx_seq: int  # context per sequence; the context holds n_ctx_seq × parallel tokens
    n_batch: int = 2048  # llama.cpp server's defaults
    n_ubatch: int = 512
    api: Any = None  # the llama_cpp module; imported by load() when None
    model: Any = field(default=None, init=False, repr=False)
    ctx: Any = field(default=None, init=False, repr=False)
    batch: Any = field(default=None, init=False, repr=False)
    n_vocab: int = field(default=0, init=False)
    kv_types: tuple[Any, Any] = field(default=(None, None), init=False)  # llama.cpp's defaults

    @staticmethod
    def available() -> bool:
        import importlib.util

        return importlib.util.find_spec("llama_cpp") is not None

    def __post_init__(self) -> None:
        if self.parallel <= 0:
            raise ValueError(f"llama.cpp parallel slots must be positive, got {self.parallel}")
        if self.parallel > self.n_batch:
            raise ValueError(f"{self.parallel} llama.cpp slots do not fit a batch of "
                             f"{self.n_batch} tokens")

    def load(self) -> None:
        api = self.api = self.api or import_llama_cpp()
        missing = [name for name in REQUIRED if not hasattr(api, name)]
        if missing:
            raise RuntimeError(f"llama-cpp-python {getattr(api, '__version__', '?')} lacks "
                               f"{', '.join(missing)}: upgrade it (written against 0.3.36)")
        if self.parallel > api.llama_max_parallel_sequences():
            raise ValueError(f"llama.cpp runs at most {api.llama_max_parallel_sequences()} "
                             f"sequences in one context, not {self.parallel}")
        quiet_log(api)
        api.llama_backend_init()
        self.model = api.llama_model_load_from_file(self.gguf_path.encode(),
                                                    api.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {self.gguf_path}")
        params = api.llama_context_default_params()
        params.n_ctx = self.n_ctx_seq * self.parallel
        params.n_batch, params.n_ubatch = self.n_batch, self.n_ubatch
        params.n_seq_max = self.parallel
        params.n_threads = params.n_threads_batch = self.threads
        self.kv_types = (_GGML_TYPES.get(params.type_k, params.type_k),
                         _GGML_TYPES.get(params.type_v, params.type_v))
        self.ctx = api.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {params.n_ctx} tokens")
        self.n_vocab = api.llama_vocab_n_tokens(api.llama_model_get_vocab(self.model))
        self.batch = api.llama_batch_init(self.n_batch, 0, 1)

    def warmup(self, requests: list[BenchRequest]) -> None:
        self._run([BenchRequest(requests[0].prompt_token_ids[:16], 4)], progress=False)

    def generate(self, requests: list[BenchRequest], progress: bool) -> Generation:
        longest = max(r.total_len for r in requests)
        n_ctx_seq = self.api.llama_n_ctx_seq(self.ctx)
        if longest > n_ctx_seq:
            raise ValueError(f"a request needs {longest} tokens of context; llama.cpp gives "
                             f"each sequence {n_ctx_seq}")
        return self._run(requests, progress)

    def _run(self, requests: list[BenchRequest], progress: bool) -> Generation:
        api = self.api
        memory = api.llama_get_memory(self.ctx)
        api.llama_memory_clear(memory, True)
        n_ctx = api.llama_n_ctx(self.ctx)
        slots = Slots(requests, self.parallel)
        ratios = []
        with progress_bar(len(requests), "llama.cpp", progress) as bar:
            while slots.admit():
                entries = plan_step(slots.running, self.n_batch)
                self._decode(entries)
                for i, entry in enumerate(entries):
                    entry.seq.n_past += 1
                    if entry.logits:
                        entry.seq.output.append(self._greedy(i))
                ratios.append(slots.stored_tokens() / n_ctx)
                for seq in slots.release_done():
                    api.llama_memory_seq_rm(memory, seq.seq_id, -1, -1)
                    bar.update(1)
        # The context is allocated whole: every slot holds n_ctx_seq cells from the start.
        usage = KVUsage(sum(ratios) / len(ratios), max(ratios))
        return Generation([slots.outputs[i] for i in range(len(requests))], usage)

    def _decode(self, entries: list[BatchEntry]) -> None:
        batch = self.batch
        for i, entry in enumerate(entries):
            batch.token[i] = entry.token
            batch.pos[i] = entry.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = entry.seq.seq_id
            batch.logits[i] = entry.logits
        batch.n_tokens = len(entries)
        status = self.api.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} on a batch of "
                               f"{len(entries)} tokens")

    def _greedy(self, i: int) -> int:
        """The argmax of the logits of batch token ``i``."""
        import numpy as np

        row = np.ctypeslib.as_array(self.api.llama_get_logits_ith(self.ctx, i),
                                    shape=(self.n_vocab,))
        return int(row.argmax())

    def describe(self) -> dict[str, Any]:
        api = self.api
        return {"gguf": self.gguf_path, "api": "llama_decode", "threads": self.threads,
                "parallel": self.parallel, "n_ctx": api.llama_n_ctx(self.ctx),
                "n_ctx_seq": api.llama_n_ctx_seq(self.ctx), "n_batch": self.n_batch,
                "n_ubatch": self.n_ubatch, "kv_cache": "/".join(map(str, self.kv_types)),
                "llama_cpp_python": getattr(api, "__version__", None)}

    def close(self) -> None:
        api = self.api
        if self.batch is not None:
            api.llama_batch_free(self.batch)
        if self.ctx:
            api.llama_free(self.ctx)
        if self.model:
            api.llama_model_free(self.model)
        self.batch = self.ctx = self.model = None
