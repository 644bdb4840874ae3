"""Sliding-window attention with optional dilation and global tokens (Longformer).

Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document Transformer", arXiv:2004.05150.
"""

from __future__ import annotations

from collections.abc import Sequence

from core_attn.attention.base import PatternAttention
from core_attn.patterns import Global, Local, Pattern
from core_attn.registry import register_attention
from core_attn.validation import check_int


@register_attention("local")
class LocalAttention(PatternAttention):
    """Each query sees ``window`` keys on each side (``window_left``/``window_right`` to differ),
    spaced ``dilation`` apart; optional global tokens see and are seen by every position.

    Args:
        window: keys visible on each side (for ``causal=True``: before the query).
        window_left: overrides ``window`` on the left.
        window_right: overrides ``window`` on the right (forced to 0 when causal).
        dilation: gap between visible keys (Longformer's dilated window).
        global_tokens: positions that attend globally (negative counts from the end), e.g. ``[0]`` for CLS.
        causal: hide future keys.
        backend: ``auto`` | ``blocked`` | ``flex`` | ``dense`` | ``banded`` (no global tokens, dilation 1).
        block_size: kernel block size (default: chosen from the window, see docs/performance.md).

    Time O(N * window), memory O(N * window) (plus O(N * g) for g global tokens).
    """

    time_complexity = "O(N w)"
    memory_complexity = "O(N w)"
    summary = "sliding window, dilation, global tokens (Longformer)"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"window": window}  # 2 window + 1 keys per query

    def __init__(self, *, window: int = 256, window_left: int | None = None, window_right: int | None = None,
                 dilation: int = 1, global_tokens: Sequence[int] = (), causal: bool = False,
                 backend: str = "auto", block_size: int | None = None):
        super().__init__(causal=causal, backend=backend)
        self.window = check_int("window", window, min_value=1)
        self.window_left = check_int("window_left", window if window_left is None else window_left, min_value=0)
        right = window if window_right is None else window_right
        self.window_right = 0 if causal else check_int("window_right", right, min_value=0)
        self.dilation = check_int("dilation", dilation, min_value=1)
        self.global_tokens = [check_int("global_tokens[]", t) for t in global_tokens]
        self.block_size = None if block_size is None else check_int("block_size", block_size, min_value=8)
        self._local = Local(self.window_left, self.window_right, self.dilation, self.block_size)
        self._global = Global(self.global_tokens) if self.global_tokens else None

    def check_length(self, n: int) -> None:
        span = max(self.window_left, self.window_right) * self.dilation
        if span > n:
            raise ValueError(
                f"window={max(self.window_left, self.window_right)} (x dilation={self.dilation}) is larger than the "
                f"sequence length N={n}; use window <= {n // self.dilation} or a longer input"
            )
        for t in self.global_tokens:
            if not -n <= t < n:
                raise ValueError(f"global_tokens contains {t}, outside a sequence of length N={n}")

    def band(self) -> tuple[int, int] | None:
        return None if self.global_tokens or self.dilation != 1 else (self.window_left, self.window_right)

    def pattern(self, n: int) -> Pattern:
        p = Pattern([self._local] + ([self._global] if self._global is not None else []))
        return p.causal() if self.causal else p

    def extra_repr(self) -> str:
        return (f"window=({self.window_left}, {self.window_right}), dilation={self.dilation}, "
                f"global_tokens={self.global_tokens}, " + super().extra_repr())
