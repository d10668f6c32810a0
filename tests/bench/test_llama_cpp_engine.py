"""``--compare llama.cpp``: llama.cpp batched through ``llama_decode`` as its server batches.

The batching is checked against a fake low-level API that keeps each sequence's KV positions
and records every ``llama_decode``; a real llama.cpp (when llama-cpp-python is installed) runs
a tiny GGUF batched and one sequence at a time, and beside Octavo.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from octavo.cli import cli
from octavo_bench.engines import measure
from octavo_bench.llama_cpp_engine import LlamaCppEngine, Slots, plan_step
from octavo_bench.workload import BenchRequest, make_workload

VOCAB = 50


def next_token(token: int, pos: int) -> int:
    """The fake model's greedy choice after ``token`` at position ``pos``."""
    return (7 * token + pos + 1) % VOCAB


def expected_output(request: BenchRequest) -> list[int]:
    token, pos, out = request.prompt_token_ids[-1], request.prompt_len - 1, []
    while len(out) < request.output_len:
        token = next_token(token, pos)
        out.append(token)
        pos += 1
    return out


class FakeLlamaApi:
    """The part of ``llama_cpp``'s low-level API the engine uses, over a fake model whose
    logits peak at :func:`next_token`. It checks what llama.cpp would refuse: batches over
    ``n_batch``, unknown sequences, positions that do not follow the sequence's KV."""

    def __init__(self, decode_status: int = 0) -> None:
        self.decode_status = decode_status
        self.decodes: list[list[tuple[int, int, int, bool]]] = []  # (seq_id, token, pos, logits)
        self.removed: list[int] = []
        self.params = None
        self.kv: dict[int, int] = {}  # seq_id -> tokens held
        self.rows: dict[int, ctypes.Array] = {}
        self.freed = []

    # loading
    def llama_max_parallel_sequences(self):
        return 256

    def llama_log_callback(self, func):
        return func

    def llama_log_set(self, callback, user_data):
        self.log_callback = callback

    def llama_backend_init(self):
        pass

    def llama_model_default_params(self):
        return SimpleNamespace()

    def llama_model_load_from_file(self, path, params):
        assert isinstance(path, bytes)
        return "model"

    def llama_context_default_params(self):
        return SimpleNamespace(n_ctx=512, n_batch=2048, n_ubatch=512, n_seq_max=1,
                               n_threads=4, n_threads_batch=4, type_k=1, type_v=1)

    def llama_init_from_model(self, model, params):
        self.params = params
        return "ctx"

    def llama_model_get_vocab(self, model):
        return "vocab"

    def llama_vocab_n_tokens(self, vocab):
        return VOCAB

    def llama_n_ctx(self, ctx):
        return self.params.n_ctx

    def llama_n_ctx_seq(self, ctx):
        return self.params.n_ctx // self.params.n_seq_max

    def llama_batch_init(self, n_tokens, embd, n_seq_max):
        return SimpleNamespace(n_tokens=0, token=[0] * n_tokens, pos=[0] * n_tokens,
                               n_seq_id=[0] * n_tokens, seq_id=[[0] for _ in range(n_tokens)],
                               logits=[False] * n_tokens)

    # decoding
    def llama_get_memory(self, ctx):
        return "memory"

    def llama_memory_clear(self, memory, data):
        self.kv.clear()

    def llama_memory_seq_rm(self, memory, seq_id, p0, p1):
        assert (p0, p1) == (-1, -1)
        self.kv.pop(seq_id, None)
        self.removed.append(seq_id)
        return True

    def llama_decode(self, ctx, batch):
        assert 0 < batch.n_tokens <= self.params.n_batch
        entries = [(batch.seq_id[i][0], batch.token[i], batch.pos[i], bool(batch.logits[i]))
                   for i in range(batch.n_tokens)]
        assert all(batch.n_seq_id[i] == 1 for i in range(batch.n_tokens))
        self.decodes.append(entries)
        if self.decode_status:
            return self.decode_status
        self.rows = {}
        for i, (seq_id, token, pos, logits) in enumerate(entries):
            assert 0 <= seq_id < self.params.n_seq_max
            assert pos == self.kv.get(seq_id, 0), f"seq {seq_id}: pos {pos} after {self.kv}"
            self.kv[seq_id] = pos + 1
            assert self.kv[seq_id] <= self.llama_n_ctx_seq(ctx)
            if logits:
                row = (ctypes.c_float * VOCAB)()
                row[next_token(token, pos)] = 1.0
                self.rows[i] = row
        return 0

    def llama_get_logits_ith(self, ctx, i):
        return ctypes.cast(self.rows[i], ctypes.POINTER(ctypes.c_float))  # KeyError: no logits

    # freeing
    def llama_batch_free(self, batch):
        self.freed.append("batch")

    def llama_free(self, ctx):
        self.freed.append(ctx)

    def llama_model_free(self, model):
        self.freed.append(model)


def fake_engine(api: FakeLlamaApi, **kwargs) -> LlamaCppEngine:
    options = {"threads": 2, "parallel": 2, "n_ctx_seq": 64, "n_batch": 8, "n_ubatch": 8,
               **kwargs}
    engine = LlamaCppEngine("model.gguf", api=api, **options)
    engine.load()
    return engine


def requests_of(*shapes: tuple[int, int]) -> list[BenchRequest]:
    """Requests with prompts of distinct tokens: (prompt length, output length) each."""
    return [BenchRequest(tuple(range(10 * i + 1, 10 * i + 1 + n_in)), n_out)
            for i, (n_in, n_out) in enumerate(shapes)]


def test_context_is_one_sequence_per_slot():
    api = FakeLlamaApi()
    engine = fake_engine(api, threads=3, parallel=4, n_ctx_seq=256, n_batch=64, n_ubatch=32)
    p = api.params
    assert (p.n_ctx, p.n_seq_max, p.n_batch, p.n_ubatch) == (1024, 4, 64, 32)
    assert p.n_threads == p.n_threads_batch == 3
    details = engine.describe()
    assert (details["n_ctx_seq"], details["parallel"], details["kv_cache"]) == (256, 4, "f16/f16")
    engine.close()
    assert api.freed == ["batch", "ctx", "model"]


def test_prompts_chunked_by_n_batch_then_one_token_per_sequence():
    api = FakeLlamaApi()
    engine = fake_engine(api)  # 2 slots, batches of 8 tokens
    requests = requests_of((5, 2), (6, 3))
    generation = engine.generate(requests, progress=False)
    calls = [[(seq, pos, logits) for seq, _, pos, logits in call] for call in api.decodes]
    assert calls == [
        # seq 0's whole prompt (logits for its last token), the first 3 of seq 1's
        [(0, 0, False), (0, 1, False), (0, 2, False), (0, 3, False), (0, 4, True),
         (1, 0, False), (1, 1, False), (1, 2, False)],
        # seq 0 decodes its first token; the rest of seq 1's prompt
        [(0, 5, True), (1, 3, False), (1, 4, False), (1, 5, True)],
        # seq 0 has its 2 tokens and left; seq 1 decodes alone
        [(1, 6, True)],
        [(1, 7, True)],
    ]
    # a decoded token is the one sampled at the previous step
    assert api.decodes[1][0][1] == generation.token_ids[0][0]
    assert generation.token_ids == [expected_output(r) for r in requests]
    assert api.removed == [0, 1]


def test_finished_sequences_leave_and_waiting_ones_take_their_slot():
    api = FakeLlamaApi()
    engine = fake_engine(api, parallel=2, n_batch=16)
    requests = requests_of((3, 1), (3, 4), (4, 2), (2, 3))
    generation = engine.generate(requests, progress=False)
    assert generation.token_ids == [expected_output(r) for r in requests]
    seqs = [sorted({seq for seq, *_ in call}) for call in api.decodes]
    tokens = [[token for _, token, _, _ in call] for call in api.decodes]
    # step 1: requests 0 and 1 read their prompts; request 0 is done after one token
    assert seqs[0] == [0, 1] and tokens[0] == [1, 2, 3, 11, 12, 13]
    # step 2: request 2 takes slot 0 beside request 1's decode, from position 0
    assert tokens[1][1:] == [21, 22, 23, 24] and api.decodes[1][1][:3] == (0, 21, 0)
    assert api.decodes[1][0][0] == 1  # the generating sequence comes first
    # every step holds at most one token per generating sequence
    for call in api.decodes:
        decoding = [seq for seq, _, pos, logits in call if logits]
        assert len(decoding) == len(set(decoding))
    # slot 0 serves requests 0, 2 and 3 in turn; slot 1 request 1 (done at step 4)
    assert api.removed == [0, 0, 1, 0]
    assert len(api.decodes) == 6


def test_plan_step_fills_the_batch_after_the_decodes():
    slots = Slots(requests_of((4, 3), (9, 3), (9, 3)), num_slots=3)
    slots.admit()
    first, second, third = slots.running
    first.n_past, first.output = 4, [7]  # generating
    second.n_past = 2  # halfway through its prompt
    entries = plan_step(slots.running, n_batch=6)
    assert [(e.seq.seq_id, e.pos, e.logits) for e in entries] == [
        (0, 4, True), (1, 2, False), (1, 3, False), (1, 4, False), (1, 5, False),
        (1, 6, False)]
    assert entries[0].token == 7
    assert [e.token for e in entries[1:]] == list(second.prompt[2:7])
    assert third.n_past == 0  # waits for room in a later step


def test_kv_usage_counts_the_tokens_held_over_the_context():
    api = FakeLlamaApi()
    engine = fake_engine(api, parallel=2, n_ctx_seq=16, n_batch=16)
    usage = engine.generate(requests_of((4, 2), (4, 2)), progress=False).kv_usage
    # step 1 holds 4 + 4 of 32 slots, step 2 holds 5 + 5
    assert usage.mean == pytest.approx((8 / 32 + 10 / 32) / 2)
    assert usage.peak == pytest.approx(10 / 32)


def test_measure_warms_up_then_times_the_workload():
    api = FakeLlamaApi()
    engine = LlamaCppEngine("model.gguf", api=api, threads=2, parallel=3, n_ctx_seq=64)
    requests = make_workload("random", 5, vocab_size=VOCAB, input_len=20, output_len=6)
    run = measure(engine, requests, progress=False)
    assert run.token_ids == [expected_output(r) for r in requests]
    assert run.cpu_seconds is not None and run.cpu_seconds >= 0
    assert run.details["parallel"] == 3 and run.details["n_batch"] == 2048
    warmup = api.decodes[0]
    assert len(warmup) == 16 and {seq for seq, *_ in warmup} == {0}


def test_requests_longer_than_a_slot_and_decode_errors_are_reported():
    api = FakeLlamaApi()
    engine = fake_engine(api, n_ctx_seq=16)
    with pytest.raises(ValueError, match="needs 20 tokens of context; llama.cpp gives each "
                                         "sequence 16"):
        engine.generate(requests_of((10, 10)), progress=False)
    engine = fake_engine(FakeLlamaApi(decode_status=1))
    with pytest.raises(RuntimeError, match="llama_decode failed with status 1"):
        engine.generate(requests_of((3, 2)), progress=False)
    with pytest.raises(ValueError, match="3 llama.cpp slots do not fit a batch of 2 tokens"):
        LlamaCppEngine("m.gguf", threads=1, parallel=3, n_ctx_seq=16, n_batch=2)
    old = LlamaCppEngine("m.gguf", api=SimpleNamespace(__version__="0.3.1"), threads=1,
                         parallel=2, n_ctx_seq=16)
    with pytest.raises(RuntimeError, match="llama-cpp-python 0.3.1 lacks llama_get_memory"):
        old.load()


needs_llama_cpp = pytest.mark.skipif(not importlib.util.find_spec("llama_cpp"),
                                     reason="llama-cpp-python is not installed")


@needs_llama_cpp
def test_batched_equals_one_sequence_at_a_time(tiny_llama_gguf):
    """Real llama.cpp: 3 slots with prompts chunked by 16-token batches give the same greedy
    tokens as one sequence at a time."""
    requests = make_workload("random", 5, vocab_size=256, input_len=20, output_len=12, seed=1)
    outputs = []
    for parallel, n_batch in ((1, 2048), (3, 16)):
        engine = LlamaCppEngine(str(tiny_llama_gguf), threads=2, parallel=parallel,
                                n_ctx_seq=256, n_batch=n_batch, n_ubatch=min(n_batch, 512))
        outputs.append(measure(engine, requests, progress=False).token_ids)
    assert outputs[0] == outputs[1]
    assert all(len(tokens) == 12 for tokens in outputs[0])


@needs_llama_cpp
def test_throughput_beside_batched_llama_cpp(tiny_llama_gguf, tmp_path):
    """The command: Octavo and llama.cpp on the same float32 GGUF agree token for token."""
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, [
        "bench", "throughput", "-m", str(tiny_llama_gguf), "--device", "cpu", "-n", "5",
        "--input-len", "20", "--output-len", "10", "--compare", "llama.cpp",
        "--llama-parallel", "3", "--threads", "2", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "octavo / llama.cpp:" in result.output and "identical for 5/5 requests" in result.output
    assert "llama.cpp settings: " in result.output
    report = json.loads(out.read_text())
    llama = report["engines"][1]
    assert llama["engine"] == "llama.cpp" and llama["details"]["parallel"] == 3
    assert llama["details"]["n_ctx_seq"] == 256 and llama["details"]["n_ctx"] == 768
    assert 0 < llama["cpu_util"] <= 2.5
