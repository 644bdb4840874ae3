"""Sparse Transformer, fixed pattern.

Child, Gray, Radford & Sutskever 2019, "Generating Long Sequences with Sparse Transformers",
arXiv:1904.10509 (the union of its two fixed heads in one head).
"""

from __future__ import annotations

from core_attn.attention.base import PatternAttention
from core_attn.attention.sparse_strided import default_stride
from core_attn.patterns import BlockDiagonal, Pattern, Summary
from core_attn.registry import register_attention
from core_attn.validation import check_int


@register_attention("sparse_fixed")
class SparseFixedAttention(PatternAttention):
    """Query i sees its own block of ``stride`` positions (``j // l == i // l``) and the last
    ``num_summary`` positions of every block (``j % l >= l - c``), the "summary" cells.

    Args:
        stride: the block length l; ``None`` picks ``ceil(sqrt(N))`` per input length.
        num_summary: c, summary positions per block (the paper uses c in {8, 16, 32} for l = 128).
        causal: hide future keys.
        backend: ``auto`` | ``blocked`` | ``flex`` | ``dense``.

    Time and memory O(N (l + c N / l)), i.e. O(N sqrt(N)) with l = sqrt(N).
    """

    time_complexity = "O(N sqrt N)"
    memory_complexity = "O(N sqrt N)"
    summary = "fixed pattern (Sparse Transformer)"

    def __init__(self, *, stride: int | None = None, num_summary: int = 1, causal: bool = False,
                 backend: str = "auto"):
        super().__init__(causal=causal, backend=backend)
        self.stride = None if stride is None else check_int("stride", stride, min_value=1)
        self.num_summary = check_int("num_summary", num_summary, min_value=1)
        if self.stride is not None and self.num_summary > self.stride:
            raise ValueError(f"num_summary={num_summary} must be <= stride={stride}")

    def stride_for(self, n: int) -> int:
        return self.stride if self.stride is not None else max(default_stride(n), self.num_summary)

    def check_length(self, n: int) -> None:
        if self.stride is not None and self.stride > n:
            raise ValueError(f"stride={self.stride} is larger than the sequence length N={n}")

    def pattern(self, n: int) -> Pattern:
        s = self.stride_for(n)
        p = Pattern([BlockDiagonal(s), Summary(s, self.num_summary)])
        return p.causal() if self.causal else p

    def extra_repr(self) -> str:
        return f"stride={self.stride or 'sqrt(N)'}, num_summary={self.num_summary}, " + super().extra_repr()
