"""Model loading: sources, HF config and tokenizer, weight formats, and ``load_model``."""
