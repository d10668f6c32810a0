"""Attention backends: the interface, the torch reference, and backend selection."""

from octavo.attention.base import AttentionBackend, AttentionMetadata
from octavo.attention.selector import select_attention_backend

__all__ = ["AttentionBackend", "AttentionMetadata", "select_attention_backend"]
