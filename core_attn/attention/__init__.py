"""Attention variants, one file each; importing this package registers them (explicitly, below)."""

from core_attn.attention.base import AttentionBase, PatternAttention
from core_attn.attention.local import LocalAttention

__all__ = ["AttentionBase", "PatternAttention", "LocalAttention"]
