#!/usr/bin/env python3
"""How OpenMP's wait policy changes decode speed, on a quiet machine and beside a busy process.

Each setting runs in a fresh process (OpenMP reads its environment once, when torch loads):
the demo model, float32, one stream and a batch of 16, 32 prompt tokens and N greedy tokens
each (EOS ignored). With ``--busy`` one more process spins on one core meanwhile, as on a
machine shared with another job. Prints tokens/s, cores used and the load; the order of the
settings is interleaved over ``--repeats``.

    python3 scripts/bench_omp_wait.py --tokens 64 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {  # name -> environment
    "octavo": {},  # what the engine sets (octavo.threads)
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "default": {"OCTAVO_OPENMP_DEFAULTS": "0"},  # libgomp's own
    "spin-10k": {"GOMP_SPINCOUNT": "10000"},
    "spin-100k": {"GOMP_SPINCOUNT": "100000"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
}
CHILD = r"""
import json, os, sys, time
from octavo import LLM, SamplingParams
batch, tokens = int(sys.argv[1]), int(sys.argv[2])
llm = LLM(enable_prefix_caching=False)
prompts = [{"prompt_token_ids": list(range(100 + i, 132 + i))} for i in range(batch)]
params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0)
llm.generate(prompts[:1], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
wall, cpu = time.perf_counter(), time.process_time()
outs = llm.generate(prompts, params, use_tqdm=False)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
n = sum(len(o.outputs[0].token_ids) for o in outs)
print(json.dumps({"tok_s": n / wall, "cores": cpu / wall, "load": os.getloadavg()[0]}))
"""


def run(setting: str, batch: int, tokens: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OCTAVO_OPENMP_DEFAULTS")}
    env.update(SETTINGS[setting])
    out = subprocess.run([sys.executable, "-c", CHILD, str(batch), str(tokens)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--busy", action="store_true", help="a process spinning on one core")
    args = parser.parse_args()
    busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None)
    try:
        rows = {}
        for _ in range(args.repeats):
            for batch in args.batches:
                for setting in args.settings:
                    result = run(setting, batch, args.tokens)
                    rows.setdefault((batch, setting), []).append(result)
                    print(f"batch {batch:3d} {setting:10s} {result['tok_s']:7.1f} tok/s "
                          f"cores {result['cores']:.2f} load {result['load']:.2f}", flush=True)
    finally:
        if busy is not None:
            busy.kill()
    print(f"\nmedian over {args.repeats} ({'beside a busy process' if args.busy else 'quiet'}):")
    for (batch, setting), results in sorted(rows.items()):
        speeds = sorted(r["tok_s"] for r in results)
        print(f"batch {batch:3d} {setting:10s} {speeds[len(speeds) // 2]:7.1f} tok/s")


if __name__ == "__main__":
    main()
