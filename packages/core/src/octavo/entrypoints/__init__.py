"""User-facing entry points: ``LLM`` (offline) and ``AsyncLLM`` (streaming)."""
