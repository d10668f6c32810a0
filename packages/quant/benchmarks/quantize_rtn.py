"""Write a round-to-nearest GPTQ or AWQ checkpoint of an HF float model, for benchmarks.

Uses the test-side writer (tests/quant/packer.py), which writes the words exactly as
gptqmodel / AutoAWQ do; RTN instead of GPTQ's error feedback changes the values, not the
format or the speed. Example (the demo model's float32 copy, written by ``octavo bench``):

    python packages/quant/benchmarks/quantize_rtn.py \
        ~/.cache/octavo/f32-hf/SmolLM2-135M-Instruct.Q4_1.F32 /tmp/smollm2-gptq-4bit \
        --method gptq --bits 4 --group-size 128
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

import torch

PACKER = Path(__file__).resolve().parents[3] / "tests" / "quant" / "packer.py"


def load_packer():
    spec = importlib.util.spec_from_file_location("octavo_quant_test_packer", PACKER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="HF float model folder")
    parser.add_argument("dst", type=Path, help="output folder")
    parser.add_argument("--method", choices=("gptq", "awq"), default="gptq")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--desc-act", action="store_true")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    packer = load_packer()
    model = AutoModelForCausalLM.from_pretrained(args.src, dtype=torch.float32).eval()
    recipe = packer.Recipe(method=args.method, bits=args.bits, group_size=args.group_size,
                           desc_act=args.desc_act)
    packer.write_checkpoint(model, args.dst, recipe)
    for path in args.src.iterdir():
        if "token" in path.name or path.name in ("chat_template.jinja",
                                                 "generation_config.json"):
            shutil.copy(path, args.dst)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
