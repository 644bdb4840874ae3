"""BigBird block-sparse attention: sliding blocks + global blocks + random blocks.

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences", arXiv:2007.14062.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core_attn.attention.base import PatternAttention
from core_attn.patterns import BlockLocal, Global, Pattern, RandomBlocks
from core_attn.registry import register_attention
from core_attn.validation import check_int


@register_attention("bigbird")
class BigBirdAttention(PatternAttention):
    """Each query block sees ``num_window_blocks`` neighbouring blocks, the global blocks and
    ``num_random_blocks`` random blocks; global blocks see everything.

    Global blocks are the first ``ceil(g / 2)`` and last ``floor(g / 2)`` blocks (BigBird ITC, as in the
    reference and HF implementations). Random blocks are drawn once per sequence length from ``seed``
    and do not change between calls or between train and eval. Unlike HF's BigBird, short inputs are
    never silently switched to full attention: too short an input raises ``ValueError``.

    Args:
        block_size: tokens per block.
        num_window_blocks: odd number of sliding blocks (3 = the block and one on each side).
        num_global_blocks: global blocks (first/last).
        num_random_blocks: random key blocks per query block.
        seed: seed of the random blocks.
        causal: hide future keys (random blocks are then drawn from the past only).
        backend: ``auto`` | ``blocked`` | ``flex`` | ``dense``.

    Time and memory O(N b (w + g + r)) with b the block size: linear in N.
    """

    time_complexity = "O(N b (w + g + r))"
    memory_complexity = "O(N b (w + g + r))"
    summary = "window + global + random blocks (BigBird)"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        # 64-token blocks, 3 window + 2 global + 3 random = 8 blocks = 512 keys per query
        return {"block_size": 64, "num_window_blocks": 3, "num_global_blocks": 2, "num_random_blocks": 3}

    def __init__(self, *, block_size: int = 64, num_window_blocks: int = 3, num_global_blocks: int = 2,
                 num_random_blocks: int = 3, seed: int = 0, causal: bool = False, backend: str = "auto"):
        super().__init__(causal=causal, backend=backend)
        self.block_size = check_int("block_size", block_size, min_value=1)
        self.num_window_blocks = check_int("num_window_blocks", num_window_blocks, min_value=1)
        if num_window_blocks % 2 == 0:
            raise ValueError(f"num_window_blocks={num_window_blocks} must be odd (the block plus equal sides)")
        self.num_global_blocks = check_int("num_global_blocks", num_global_blocks, min_value=0)
        self.num_random_blocks = check_int("num_random_blocks", num_random_blocks, min_value=0)
        self.seed = check_int("seed", seed)
        g = self.num_global_blocks
        self._global_blocks = list(range(math.ceil(g / 2))) + [-(i + 1) for i in range(g // 2)]
        self._window = BlockLocal(self.block_size, self.num_window_blocks)
        self._random = RandomBlocks(self.block_size, self.num_random_blocks, self.seed,
                                    exclude_window=self.num_window_blocks // 2,
                                    exclude_blocks=self._global_blocks, causal=causal)
        self._globals: dict = {}

    def check_length(self, n: int) -> None:
        need = self.block_size * (self.num_window_blocks + self.num_global_blocks)
        if n < need:
            raise ValueError(
                f"sequence length N={n} is too short for bigbird with block_size={self.block_size}, "
                f"num_window_blocks={self.num_window_blocks}, num_global_blocks={self.num_global_blocks}: "
                f"need N >= {need} (use a smaller block_size, or dense attention for short inputs)"
            )

    def _global(self, n: int):
        if n not in self._globals:
            bs, nb = self.block_size, math.ceil(n / self.block_size)
            tokens = []
            for b in self._global_blocks:
                b = b % nb
                tokens.extend(range(b * bs, min(n, (b + 1) * bs)))
            self._globals[n] = Global(tokens)
        return self._globals[n]

    def native_blocks(self, n: int) -> tuple[Tensor, int] | None:
        """Each query block's keys as ranges for the native kernel: the fused plan's window, global and random
        key blocks, and all keys for the global query blocks (their rows see everything); ``None`` for blocks
        that are no multiple of 16 tokens, or a pattern without the fused plan."""
        from core_attn import native

        key = ("native", n)
        if key not in self._parts_cache:
            self._parts_cache[key] = None
            parts = self.parts(n, torch.device("cpu"))
            fused = parts[0]
            rows = len(parts) - 1  # the global rows' part, if any
            if (fused.exact and self.block_size % native.VECTOR == 0 and rows == (1 if self.num_global_blocks else 0)
                    and fused.kv_index.shape[0] == math.ceil(n / self.block_size)):
                ranges = native.block_ranges(fused.kv_index, self.block_size, n,
                                             all_keys=tuple(self._global_blocks))  # global rows see every key
                self._parts_cache[key] = (ranges, self.block_size)
        return self._parts_cache[key]

    def pattern(self, n: int) -> Pattern:
        comps = [self._window]
        if self.num_global_blocks:
            comps.append(self._global(n))
        if self.num_random_blocks:
            comps.append(self._random)
        p = Pattern(comps)
        return p.causal() if self.causal else p

    def extra_repr(self) -> str:
        return (f"block_size={self.block_size}, window={self.num_window_blocks}, global={self.num_global_blocks}, "
                f"random={self.num_random_blocks}, seed={self.seed}, " + super().extra_repr())
