"""Attention variants, one file each; importing this package registers them (explicitly, below)."""

from core_attn.attention.base import AttentionBase, PatternAttention
from core_attn.attention.bigbird import BigBirdAttention
from core_attn.attention.dense import DenseAttention
from core_attn.attention.local import LocalAttention
from core_attn.attention.sparse_fixed import SparseFixedAttention
from core_attn.attention.sparse_strided import SparseStridedAttention
from core_attn.attention.linear import LinearAttention
from core_attn.attention.linformer import LinformerAttention
from core_attn.attention.nystrom import NystromAttention
from core_attn.attention.lsh import LSHAttention
from core_attn.attention.hierarchical import HierarchicalAttention
from core_attn.attention.perceiver import PerceiverAttention
from core_attn.attention.adaptive_span import AdaptiveSpanAttention
from core_attn.attention.topk import TopKAttention

__all__ = [
    "AttentionBase",
    "PatternAttention",
    "BigBirdAttention",
    "DenseAttention",
    "LocalAttention",
    "SparseFixedAttention",
    "SparseStridedAttention",
    "LinearAttention",
    "LinformerAttention",
    "NystromAttention",
    "LSHAttention",
    "HierarchicalAttention",
    "PerceiverAttention",
    "AdaptiveSpanAttention",
    "TopKAttention",
]
