"""Tiny random HF checkpoints (config, weights, tokenizer) for tests that need no download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)

# architecture -> (transformers config class, model class, overrides)
TINY_ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama3-tied": ("LlamaConfig", "LlamaForCausalLM", {
        "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 12}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
}


# Joins the turns' words; enough to exercise chat paths with the word-level tokenizer.
TINY_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                      "{% if add_generation_prompt %}w0{% endif %}")


def save_word_tokenizer(folder: str | Path, num_words: int = 100) -> None:
    """A word-level tokenizer ``<unk> <s> </s> w0 w1 ...`` split on whitespace."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(num_words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>", chat_template=TINY_CHAT_TEMPLATE
                            ).save_pretrained(folder)


def save_tiny_model(folder: str | Path, arch: str = "llama", seed: int = 0,
                    **overrides: Any) -> torch.nn.Module:
    """Save a random tiny HF model of ``arch`` with a tokenizer; return the HF model (eval)."""
    import transformers

    config_name, model_name, arch_overrides = TINY_ARCHS[arch]
    config = getattr(transformers, config_name)(**{**TINY_LLAMA, **arch_overrides, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(folder)
    save_word_tokenizer(folder, num_words=min(100, config.vocab_size - 3))
    return model


def save_tiny_mpt(folder: str | Path, seed: int = 0) -> torch.nn.Module:
    """Save a random tiny MPT (ALiBi attention, LayerNorm) with a tokenizer; return the HF
    model (eval): the ALiBi case of the engine-level backend tests."""
    from transformers import MptConfig, MptForCausalLM

    config = MptConfig(vocab_size=128, d_model=64, n_heads=4, n_layers=2, max_seq_len=256,
                       bos_token_id=1, eos_token_id=2, architectures=["MptForCausalLM"])
    torch.manual_seed(seed)
    model = MptForCausalLM(config).eval()
    model.save_pretrained(folder)
    save_word_tokenizer(folder)
    return model
