"""Offline throughput: Octavo beside HF transformers ``generate`` on the same prompts, one run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/throughput.py                  # demo, CPU
    python benchmarks/throughput.py --device cuda --dtype bfloat16 --random-llama 1b
    # requests of mixed lengths, HF in static batches of 32 (continuous batching's case)
    python benchmarks/throughput.py --num-prompts 128 --output-len-range 16 256 --hf-batch 32

Prints tokens/s of both, their ratio, greedy agreement, and KV cache utilisation (tokens
stored / token slots allocated) of Octavo's paged cache beside HF's padded cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import torch

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her", "an", "which", "this", "be", "river", "city", "music", "light", "winter", "garden", "machine", "story", "ocean", "market", "history", "science", "mountain", "letter", "window", "engine", "forest", "village", "language", "question", "morning", "journey"]
TASKS = ["Write a short story about", "Explain in simple words", "Summarise the following:",
         "Translate into French:", "List three facts about", "Describe"]

RANDOM_LLAMAS = {  # architecture-faithful configs with random weights (speed does not care)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
}


def make_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(TASKS)} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 90)))
            for _ in range(n)]


def save_random_llama(size: str, folder: str) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    from octavo.testing.tiny_models import save_word_tokenizer

    config = LlamaConfig(**RANDOM_LLAMAS[size], max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    save_word_tokenizer(folder)
    del model
    return folder


def run_octavo(args, prompt_ids):
    from octavo import LLM, SamplingParams

    llm = LLM(args.model, device=args.device, dtype=args.dtype,
              max_num_seqs=args.num_prompts, max_num_batched_tokens=args.max_batched_tokens,
              attention_backend=args.backend, **({"kv_cache_memory_gib": args.kv_gib}
                                                 if args.kv_gib else {}))
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in args.lengths]
    llm.generate(prompt_ids[:2], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    scheduler = llm.engine.core.scheduler
    kv = scheduler.kv_cache
    samples = []
    step = llm.engine.core.step

    def measured_step():
        outputs = step()
        used = kv.num_blocks - kv.num_free_blocks
        if used:  # tokens whose K/V sit in the cache / token slots of the blocks in use
            stored = sum(r.num_computed_tokens for r in scheduler.running)
            samples.append((stored, used * kv.block_size))
        return outputs

    llm.engine.core.step = measured_step
    sync(args.device)
    start = time.perf_counter()
    outputs = llm.generate(prompt_ids, params, use_tqdm=False)
    sync(args.device)
    elapsed = time.perf_counter() - start
    peak = max(samples, key=lambda s: s[1])
    mean_util = sum(s / a for s, a in samples) / len(samples)
    return dict(seconds=elapsed, tokens=[o.outputs[0].token_ids for o in outputs],
                kv_util_peak=peak[0] / peak[1], kv_util_mean=mean_util,
                backend=type(llm.engine.core.runner.model.ctx.attention_backend).__name__
                if not isinstance(llm.engine.core.runner.model.ctx.attention_backend, type)
                else llm.engine.core.runner.model.ctx.attention_backend.__name__)


def run_hf(args, prompt_ids):
    from transformers import AutoModelForCausalLM

    from octavo.model_loader.loader import resolve_model_source

    source = resolve_model_source(args.model)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "auto": torch.float32 if args.device == "cpu" else torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(source.folder, torch_dtype=dtype,
                                                 **source.hf_kwargs).to(args.device).eval()
    pad = 0
    outputs, padded_slots = [], 0
    with torch.inference_mode():
        warm = torch.tensor([prompt_ids[0][-8:]], device=args.device)
        model.generate(input_ids=warm, max_new_tokens=4, do_sample=False, pad_token_id=pad)
        sync(args.device)
        start = time.perf_counter()
        for lo in range(0, len(prompt_ids), args.hf_batch):  # static batches, left-padded
            batch, lengths = prompt_ids[lo:lo + args.hf_batch], args.lengths[lo:lo + args.hf_batch]
            width, new = max(map(len, batch)), max(lengths)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=args.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch],
                                device=args.device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, pad_token_id=pad)
            outputs += [row[width:width + n] for row, n in zip(out.tolist(), lengths)]
            padded_slots += len(batch) * (width + new)
        sync(args.device)
    elapsed = time.perf_counter() - start
    stored = sum(len(p) + n for p, n in zip(prompt_ids, args.lengths))
    return dict(seconds=elapsed, tokens=outputs, kv_util_peak=stored / padded_slots)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the demo SmolLM2-135M")
    parser.add_argument("--random-llama", choices=sorted(RANDOM_LLAMAS), default=None)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--output-len-range", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                        help="each request draws its length from LO..HI (seeded)")
    parser.add_argument("--hf-batch", type=int, default=None,
                        help="HF batch size (default: all prompts in one batch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--backend", default=None, help="attention backend (default: best)")
    parser.add_argument("--max-batched-tokens", type=int, default=2048)
    parser.add_argument("--kv-gib", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.random_llama:
        tmp = tempfile.mkdtemp(prefix="octavo-bench-")
        args.model = save_random_llama(args.random_llama, tmp)

    from octavo.model_loader.loader import load_tokenizer, resolve_model_source

    tokenizer = load_tokenizer(resolve_model_source(args.model))
    prompt_ids = [tokenizer(p).input_ids for p in make_prompts(args.num_prompts)]
    if args.random_llama:  # its toy tokenizer knows few words: use random ids of those lengths
        rng = random.Random(0)
        vocab = RANDOM_LLAMAS[args.random_llama]["vocab_size"]
        prompt_ids = [[rng.randrange(3, vocab) for _ in ids] for ids in prompt_ids]
    rng = random.Random(1)
    args.lengths = ([rng.randint(*args.output_len_range) for _ in prompt_ids]
                    if args.output_len_range else [args.output_len] * len(prompt_ids))
    args.hf_batch = args.hf_batch or len(prompt_ids)
    load_before = os.getloadavg()
    octavo = run_octavo(args, prompt_ids)
    hf = None if args.skip_hf else run_hf(args, prompt_ids)
    load_after = os.getloadavg()

    n_tokens = sum(args.lengths)
    rows = [("octavo", octavo)] + ([("hf", hf)] if hf else [])
    print(f"model={args.model or 'demo SmolLM2-135M-Instruct'} device={args.device} "
          f"dtype={args.dtype} prompts={args.num_prompts} "
          f"output_len={args.output_len_range or args.output_len} hf_batch={args.hf_batch} "
          f"prompt_tokens={sum(map(len, prompt_ids))} threads={torch.get_num_threads()} "
          f"backend={octavo['backend']} loadavg_before={load_before[0]:.2f} "
          f"loadavg_after={load_after[0]:.2f}")
    print(f"{'engine':8} {'seconds':>8} {'gen tok/s':>10} {'KV util':>8}")
    for name, res in rows:
        print(f"{name:8} {res['seconds']:8.2f} {n_tokens / res['seconds']:10.1f} "
              f"{res['kv_util_peak']:8.1%}")
    result = dict(args=vars(args), octavo_tok_s=n_tokens / octavo["seconds"],
                  octavo_kv_util_peak=octavo["kv_util_peak"],
                  octavo_kv_util_mean=octavo["kv_util_mean"], backend=octavo["backend"])
    if hf:
        same = sum(a == b for a, b in zip(octavo["tokens"], hf["tokens"]))
        ratio = hf["seconds"] / octavo["seconds"]
        print(f"speedup octavo/hf = {ratio:.2f}x; greedy outputs identical for "
              f"{same}/{args.num_prompts} prompts (HF pads; small numeric drift can flip ties)")
        result.update(hf_tok_s=n_tokens / hf["seconds"], hf_kv_util=hf["kv_util_peak"],
                      speedup=ratio, identical=same)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
