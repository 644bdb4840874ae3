"""Attention variants, one file each; importing this package registers them (explicitly, below)."""

from core_attn.attention.base import AttentionBase, PatternAttention
from core_attn.attention.bigbird import BigBirdAttention
from core_attn.attention.dense import DenseAttention
from core_attn.attention.local import LocalAttention
from core_attn.attention.sparse_fixed import SparseFixedAttention
from core_attn.attention.sparse_strided import SparseStridedAttention

__all__ = [
    "AttentionBase",
    "PatternAttention",
    "BigBirdAttention",
    "DenseAttention",
    "LocalAttention",
    "SparseFixedAttention",
    "SparseStridedAttention",
]
