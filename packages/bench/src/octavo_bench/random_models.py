"""Llama-architecture checkpoints with random weights, for speed runs where no real checkpoint
of that size can be reached (the GPU machine). Speed does not depend on the weights' values."""

from __future__ import annotations

from pathlib import Path

RANDOM_LLAMAS = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
}


def save_random_llama(size: str, folder: str | Path, dtype: str = "bfloat16") -> Path:
    """Save a random Llama of shape ``size`` (a key of RANDOM_LLAMAS) with a word tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from octavo.testing.tiny_models import save_word_tokenizer

    if size not in RANDOM_LLAMAS:
        raise ValueError(f"unknown random Llama size {size!r}; choose one of "
                         f"{', '.join(sorted(RANDOM_LLAMAS))}")
    config = LlamaConfig(**RANDOM_LLAMAS[size], max_position_embeddings=4096, bos_token_id=1,
                         eos_token_id=2, torch_dtype=dtype)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    save_word_tokenizer(folder)
    return Path(folder)
