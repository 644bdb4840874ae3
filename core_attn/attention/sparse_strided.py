"""Sparse Transformer, strided pattern.

Child, Gray, Radford & Sutskever 2019, "Generating Long Sequences with Sparse Transformers",
arXiv:1904.10509 (the union of its two strided heads in one head, as in their "strided" attention).
"""

from __future__ import annotations

import math

from core_attn.attention.base import PatternAttention
from core_attn.patterns import Local, Pattern, Strided
from core_attn.registry import register_attention
from core_attn.validation import check_int


def default_stride(n: int) -> int:
    """sqrt(N) rounded up: the stride that makes both heads O(N sqrt(N))."""
    return max(1, math.ceil(math.sqrt(n)))


@register_attention("sparse_strided")
class SparseStridedAttention(PatternAttention):
    """Query i sees the previous ``stride - 1`` positions and every position ``j`` with
    ``(i - j) % stride == 0`` (non-causal: also the next ``stride - 1`` and the later strided ones).

    Args:
        stride: the stride l; ``None`` picks ``ceil(sqrt(N))`` per input length.
        causal: hide future keys (the paper's autoregressive setting).
        backend: ``auto`` | ``blocked`` | ``flex`` | ``dense``.

    Time and memory O(N sqrt(N)) with stride sqrt(N): the local head costs N * l and the strided head
    N * N / l (executed block-sparse: each residue class modulo l is one dense block).
    """

    time_complexity = "O(N sqrt N)"
    memory_complexity = "O(N sqrt N)"
    summary = "strided pattern (Sparse Transformer)"

    def __init__(self, *, stride: int | None = None, causal: bool = False, backend: str = "auto"):
        super().__init__(causal=causal, backend=backend)
        self.stride = None if stride is None else check_int("stride", stride, min_value=1)

    def stride_for(self, n: int) -> int:
        return self.stride if self.stride is not None else default_stride(n)

    def check_length(self, n: int) -> None:
        if self.stride is not None and self.stride > n:
            raise ValueError(f"stride={self.stride} is larger than the sequence length N={n}")

    def pattern(self, n: int) -> Pattern:
        s = self.stride_for(n)
        p = Pattern([Local(s - 1, 0 if self.causal else s - 1), Strided(s)])
        return p.causal() if self.causal else p

    def extra_repr(self) -> str:
        return f"stride={self.stride or 'sqrt(N)'}, " + super().extra_repr()
