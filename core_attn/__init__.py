"""longattn's efficient-attention core: sparse, kernel and low-rank attention behind one API.

>>> import core_attn
>>> attn = core_attn.build_attention("local", window=64)
"""

from core_attn import attention as attention  # registers the variants
from core_attn.attention import AttentionBase, PatternAttention
from core_attn.layers import MultiheadAttention, TransformerBlock, TransformerEncoder
from core_attn.patterns import Pattern
from core_attn.reference import reference_attention
from core_attn.registry import build_attention, get_attention_class, list_attention, register_attention

__all__ = [
    "AttentionBase",
    "PatternAttention",
    "MultiheadAttention",
    "TransformerBlock",
    "TransformerEncoder",
    "Pattern",
    "build_attention",
    "get_attention_class",
    "list_attention",
    "reference_attention",
    "register_attention",
]
__version__ = "0.1.0"
