"""Composable sparsity patterns and the plans the block-sparse kernel executes.

A :class:`Pattern` is a union of components (local band, dilated band, global tokens, random blocks,
strided, fixed) optionally intersected with a causal mask. One pattern gives three things:

* ``pattern.mask(i, j)``: a vectorised predicate over broadcast position tensors. It is the single
  source of truth: :meth:`Pattern.dense_mask` evaluates it on the full grid (tests and pictures only),
  :meth:`Pattern.mask_mod` wraps it for FlexAttention's ``BlockMask``, and the blocked kernel evaluates
  it on the gathered positions of each block, so every backend computes the same set of pairs.
* ``pattern.parts(n)``: how to enumerate those pairs without an ``N x N`` mask. Each :class:`Part`
  lists, per block of queries, the blocks of keys to visit (possibly over a permuted order of positions,
  which turns dilated and strided patterns into contiguous blocks). Parts of one pattern may overlap; the
  kernel counts each pair once by masking, in part ``p``, the pairs already owned by parts ``< p``.
* ``pattern.block_layout(n, block)``: a boolean (n_blocks, n_blocks) picture of the visited blocks.

References: Longformer (Beltagy et al. 2020), BigBird (Zaheer et al. 2020), Sparse Transformer
(Child et al. 2019).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from core_attn.validation import check_int

if TYPE_CHECKING:  # annotations only: core_attn.attention.base imports this module
    from core_attn.attention.base import PatternAttention

MaskFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Part:
    """One enumerable piece of a pattern, executed by :func:`core_attn.kernels.block_sparse_attention`.

    Attributes:
        q_pos: (Lq,) original positions of the queries in visiting order (-1 = padding), Lq % block_q == 0.
        k_pos: (Lk,) original positions of the keys in visiting order (-1 = padding), Lk % block_k == 0.
        kv_index: (Lq // block_q, C) for each query block, the key blocks to visit (-1 = none).
        block_q: queries per block.
        block_k: keys per block.
        mask: predicate over original positions: the pairs this part is responsible for.
    """

    q_pos: Tensor
    k_pos: Tensor
    kv_index: Tensor
    block_q: int
    block_k: int
    mask: MaskFn
    identity_q: bool = False  # q_pos == arange(n) padded at the end: no gather needed
    identity_k: bool = False
    band: int | bool | None = None  # kv_index[r, c] == r + c + band: set lazily by the kernel
    exact: bool = False  # every pair of a listed (query block, key block) is in ``mask``: no mask to evaluate
    # the kernel's hidden-pair masks of this plan, kept across calls (see core_attn.kernels.MASK_CACHE_BYTES)
    mask_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def row_slots(self) -> Tensor:
        """Slots of the visiting order that hold a real query (q_pos >= 0)."""
        return torch.nonzero(self.q_pos >= 0).flatten()

    @property
    def rows(self) -> Tensor | None:
        """The original positions of the real queries (shared by the batch), or None when per head."""
        return None if self.q_pos.dim() != 1 else self.q_pos[self.q_pos >= 0]


def padded_arange(n: int, block: int, device=None) -> Tensor:
    """Positions ``0 .. n-1`` padded with ``-1`` to a whole number of ``block``-sized blocks: the ``q_pos`` /
    ``k_pos`` layout of a :class:`Part` (a negative position is a padding slot).

    Returns:
        A (ceil(n / block) * block,) int64 tensor.
    """
    length = math.ceil(n / block) * block
    pos = torch.arange(length, device=device)
    return torch.where(pos < n, pos, -1)


def _band_index(n_blocks: int, block: int, left: int, right: int, device=None, n_kblocks: int | None = None) -> Tensor:
    """(n_blocks, C) key blocks covering [qstart - left, qend + right] for each query block."""
    n_kblocks = n_blocks if n_kblocks is None else n_kblocks
    first = torch.div(torch.arange(n_blocks, device=device) * block - left, block, rounding_mode="floor")
    count = (block - 1 + left + right) // block + 2
    idx = first[:, None] + torch.arange(count, device=device)[None, :]
    last = torch.div(torch.arange(n_blocks, device=device) * block + block - 1 + right, block, rounding_mode="floor")
    valid = (idx >= 0) & (idx < n_kblocks) & (idx <= last[:, None])
    return torch.where(valid, idx, -1)


def _trim(kv_index: Tensor) -> Tensor:
    """Drop columns that are -1 in every row."""
    keep = (kv_index >= 0).any(0)
    return kv_index[:, keep] if keep.any() else kv_index[:, :1]


def pick_block(span: int, n: int) -> int:
    """Kernel block size for a band of ``span`` keys per side: big enough to amortise the matmul,
    small enough that the padded blocks waste little (see docs/performance.md)."""
    if span >= 256:
        block = 128
    elif span >= 64:
        block = 64
    else:
        block = 32
    return max(16, min(block, 1 << max(4, math.ceil(math.log2(max(n, 1))))))


class Component:
    """One building block of a pattern; subclasses define ``mask`` and ``parts``."""

    def mask(self, i: Tensor, j: Tensor) -> Tensor:  # pragma: no cover - interface
        """Whether key position ``j`` is visible from query position ``i`` (broadcasting tensors)."""
        raise NotImplementedError

    def mask_fn(self, n: int, device=None) -> MaskFn:
        """``mask`` for length ``n`` as a pure function (tables captured, no mutable state), safe to
        keep in a cached plan or hand to ``torch.compile``."""
        return self.mask

    def parts(self, n: int, device=None) -> list[Part]:  # pragma: no cover - interface
        raise NotImplementedError

    def key_blocks(self, n: int, block: int, device=None) -> tuple[Tensor, MaskFn] | None:
        """For block-granular components (BigBird's): ``(kv, covered)`` where ``kv`` (n_blocks, C) lists
        the key blocks of each query block in natural order at this ``block`` size, every pair of a
        listed block visible, and ``covered`` is the predicate of exactly those pairs. ``None`` when the
        component is not block-granular at ``block``. :meth:`Pattern.parts` fuses such components into
        one plan (one pass, no merge of partial softmaxes)."""
        return None

    def rest_parts(self, n: int, device=None) -> list[Part]:
        """The parts for the pairs ``key_blocks`` does not cover (none for most components)."""
        return []

    def to_pattern(self) -> "Pattern":
        return Pattern([self])

    def __or__(self, other):
        return self.to_pattern() | other


class Local(Component):
    """Sliding window: key j is visible from query i when ``-left <= (j - i) / dilation <= right``
    and ``(j - i) % dilation == 0`` (Longformer's sliding and dilated windows)."""

    def __init__(self, left: int, right: int, dilation: int = 1, block: int | None = None):
        self.left = check_int("window_left", left, min_value=0)
        self.right = check_int("window_right", right, min_value=0)
        self.dilation = check_int("dilation", dilation, min_value=1)
        self.block = block

    def __repr__(self) -> str:
        return f"Local(left={self.left}, right={self.right}, dilation={self.dilation})"

    def mask(self, i, j):
        d = j - i
        m = (d >= -self.left * self.dilation) & (d <= self.right * self.dilation)
        if self.dilation > 1:
            m = m & (torch.remainder(d, self.dilation) == 0)
        return m

    def parts(self, n, device=None):
        dil = self.dilation
        m = math.ceil(n / dil)  # positions per residue class
        block = self.block or pick_block(max(self.left, self.right), m)
        m_pad = math.ceil(m / block) * block
        nb = m_pad // block
        # Residue class r holds positions r, r + dil, r + 2 dil, ...: a dilated window is a plain
        # window inside each class, so the kernel sees contiguous blocks.
        t = torch.arange(m_pad, device=device)
        pos = torch.arange(dil, device=device)[:, None] + dil * t[None, :]
        pos = torch.where((pos < n) & (t[None, :] < m), pos, -1).reshape(-1)
        band = _band_index(nb, block, self.left, self.right, device)
        kv = torch.cat([torch.where(band >= 0, band + r * nb, -1) for r in range(dil)], 0)
        ident = dil == 1
        return [Part(pos, pos, _trim(kv), block, block, self.mask, identity_q=ident, identity_k=ident)]


class BlockLocal(Component):
    """BigBird's sliding blocks: query block b sees key blocks ``b - w .. b + w`` (block granular)."""

    def __init__(self, block_size: int, num_window_blocks: int):
        self.block_size = check_int("block_size", block_size, min_value=1)
        self.half = (check_int("num_window_blocks", num_window_blocks, min_value=1) - 1) // 2

    def __repr__(self) -> str:
        return f"BlockLocal(block_size={self.block_size}, num_window_blocks={2 * self.half + 1})"

    def mask(self, i, j):
        bs = self.block_size
        return (torch.div(i, bs, rounding_mode="floor") - torch.div(j, bs, rounding_mode="floor")).abs() <= self.half

    def parts(self, n, device=None):
        bs = self.block_size
        pos = padded_arange(n, bs, device)
        nb = pos.numel() // bs
        kv = _band_index(nb, bs, self.half * bs, self.half * bs, device)
        return [Part(pos, pos, _trim(kv), bs, bs, self.mask, identity_q=True, identity_k=True)]

    def key_blocks(self, n, block, device=None):
        if block != self.block_size:
            return None
        nb = math.ceil(n / block)
        return _band_index(nb, block, self.half * block, self.half * block, device), self.mask


class Global(Component):
    """Global tokens: they attend to every position and every position attends to them.

    ``tokens`` are explicit positions (negative values count from the end, like Python indices).
    """

    def __init__(self, tokens, block: int = 64):
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("global tokens: expected at least one position, got an empty list")
        self.tokens = toks
        self.block = block
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"Global(tokens={self.tokens if len(self.tokens) <= 8 else str(len(self.tokens)) + ' tokens'})"

    def positions(self, n: int, device=None) -> Tensor:
        toks = sorted({t % n if t < 0 else t for t in self.tokens if -n <= t < n})
        return torch.tensor(toks, dtype=torch.long, device=device)

    def _table(self, n, device):
        key = (n, str(device))
        if key not in self._cache:
            table = torch.zeros(n + 1, dtype=torch.bool, device=device)  # slot n: padding
            table[self.positions(n, device)] = True
            self._cache[key] = table
        return self._cache[key]

    @staticmethod
    def _is_global(table: Tensor, x: Tensor) -> Tensor:
        last = table.numel() - 1  # slot n stands for padding (-1) and is never global
        return table[torch.where(x >= 0, x, last).clamp(max=last)]

    @staticmethod
    def _mask(table: Tensor, i: Tensor, j: Tensor) -> Tensor:
        return Global._is_global(table, i) | Global._is_global(table, j)

    def mask_fn(self, n, device=None):
        return functools.partial(Global._mask, self._table(n, device))

    def parts(self, n, device=None):
        table = self._table(n, device)
        g = self.positions(n, device)
        bq = max(8, min(self.block, 1 << math.ceil(math.log2(max(len(g), 1)))))
        g_pad = torch.cat([g, g.new_full(((-len(g)) % bq,), -1)])
        bk = 128
        all_pos = padded_arange(n, bk, device)
        rows_kv = torch.arange(all_pos.numel() // bk, device=device).expand(g_pad.numel() // bq, -1)
        rows = Part(g_pad, all_pos, rows_kv.contiguous(), bq, bk, lambda i, j: Global._is_global(table, i) & (j == j), identity_k=True)
        q_all = padded_arange(n, 128, device)
        cols_kv = torch.arange(g_pad.numel() // bq, device=device).expand(q_all.numel() // 128, -1)
        cols = Part(q_all, g_pad, cols_kv.contiguous(), 128, bq, lambda i, j: Global._is_global(table, j) & (i == i), identity_q=True)
        return [rows, cols]

    def key_blocks(self, n, block, device=None):
        # Block-granular when the global tokens fill whole blocks (BigBird's global blocks): the columns
        # of those blocks are then listed for every query block; the global rows stay a part of their own.
        g = self.positions(n, device)
        blocks = torch.unique(torch.div(g, block, rounding_mode="floor"))
        full = (torch.clamp(n - blocks * block, max=block)).sum()
        if len(g) == 0 or int(full) != len(g) or len(blocks) > 4:
            return None
        nb = math.ceil(n / block)
        table = self._table(n, device)
        return blocks.expand(nb, -1), functools.partial(Global._is_global_key, table)

    @staticmethod
    def _is_global_key(table: Tensor, i: Tensor, j: Tensor) -> Tensor:
        return Global._is_global(table, j) & (i == i)

    def rest_parts(self, n, device=None):
        return self.parts(n, device)[:1]


class RandomBlocks(Component):
    """BigBird's random blocks: each query block attends to ``num_random_blocks`` key blocks drawn once
    from a generator seeded with ``seed`` (so train and eval see the same pattern for a given length).

    Blocks within ``exclude_window`` of the query block and the blocks in ``exclude_blocks`` (negative
    counts from the end; BigBird's global blocks) are not drawn, since those pairs are present anyway;
    with ``causal`` only earlier blocks are drawn."""

    def __init__(self, block_size: int, num_random_blocks: int, seed: int = 0, exclude_window: int = 1,
                 exclude_blocks=(), causal: bool = False):
        self.block_size = check_int("block_size", block_size, min_value=1)
        self.r = check_int("num_random_blocks", num_random_blocks, min_value=0)
        self.seed = int(seed)
        self.exclude_window = exclude_window
        self.exclude_blocks = list(exclude_blocks)
        self.causal = causal
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"RandomBlocks(block_size={self.block_size}, num_random_blocks={self.r}, seed={self.seed})"

    def table(self, n: int, device=None) -> Tensor:
        """(n_blocks, r) the random key blocks of each query block (-1 where fewer are available)."""
        key = (n, str(device))
        if key not in self._cache:
            nb = math.ceil(n / self.block_size)
            gen = torch.Generator().manual_seed(self.seed)
            excluded = {e % nb for e in self.exclude_blocks if -nb <= e < nb}
            rows = []
            for b in range(nb):
                hi = b - self.exclude_window if self.causal else nb
                cand = [c for c in range(max(hi, 0)) if abs(c - b) > self.exclude_window and c not in excluded]
                order = torch.randperm(len(cand), generator=gen)[: self.r].sort().values
                picked = [cand[o] for o in order.tolist()]
                rows.append(picked + [-1] * (self.r - len(picked)))
            self._cache[key] = torch.tensor(rows, dtype=torch.long).reshape(nb, self.r).to(device)
        return self._cache[key]

    @staticmethod
    def _mask(block_size: int, table: Tensor, i: Tensor, j: Tensor) -> Tensor:
        qb = torch.div(i, block_size, rounding_mode="floor").clamp(0, table.shape[0] - 1)
        kb = torch.div(j, block_size, rounding_mode="floor")
        hit = (qb < 0) & (kb < 0)  # all False, broadcast shape
        for c in range(table.shape[1]):  # r is small (2-4): a loop keeps it vmap- and memory-friendly
            hit = hit | (table[:, c][qb] == kb)
        return hit

    def mask_fn(self, n, device=None):
        return functools.partial(RandomBlocks._mask, self.block_size, self.table(n, device))

    def parts(self, n, device=None):
        if self.r == 0:
            return []
        bs = self.block_size
        pos = padded_arange(n, bs, device)
        return [Part(pos, pos, self.table(n, device), bs, bs, self.mask_fn(n, device), identity_q=True,
                     identity_k=True)]

    def key_blocks(self, n, block, device=None):
        if block != self.block_size or self.r == 0:
            return None
        return self.table(n, device), self.mask_fn(n, device)


class Strided(Component):
    """Sparse Transformer's strided head: key j is visible from query i when ``(i - j) % stride == 0``.
    Positions of one residue class are gathered together, so each class is one dense block."""

    def __init__(self, stride: int):
        self.stride = check_int("stride", stride, min_value=1)

    def __repr__(self) -> str:
        return f"Strided(stride={self.stride})"

    def mask(self, i, j):
        return torch.remainder(i - j, self.stride) == 0

    def parts(self, n, device=None):
        s = self.stride
        m = math.ceil(n / s)
        block = max(8, math.ceil(m / 8) * 8)  # one block per residue class
        t = torch.arange(block, device=device)
        pos = torch.arange(s, device=device)[:, None] + s * t[None, :]
        pos = torch.where(pos < n, pos, -1).reshape(-1)
        kv = torch.arange(s, device=device)[:, None]
        return [Part(pos, pos, kv, block, block, self.mask)]


class BlockDiagonal(Component):
    """Attention within consecutive blocks of ``size`` positions (Sparse Transformer fixed, head 1)."""

    def __init__(self, size: int):
        self.size = check_int("stride", size, min_value=1)

    def __repr__(self) -> str:
        return f"BlockDiagonal(size={self.size})"

    def mask(self, i, j):
        return torch.div(i, self.size, rounding_mode="floor") == torch.div(j, self.size, rounding_mode="floor")

    def parts(self, n, device=None):
        pos = padded_arange(n, self.size, device)
        kv = torch.arange(pos.numel() // self.size, device=device)[:, None]
        return [Part(pos, pos, kv, self.size, self.size, self.mask, identity_q=True, identity_k=True)]


class Summary(Component):
    """Sparse Transformer fixed, head 2: every query sees the last ``c`` positions of each block of
    ``stride`` positions (``j % stride >= stride - c``)."""

    def __init__(self, stride: int, c: int):
        self.stride = check_int("stride", stride, min_value=1)
        self.c = check_int("num_summary", c, min_value=1, max_value=stride)

    def __repr__(self) -> str:
        return f"Summary(stride={self.stride}, c={self.c})"

    def mask(self, i, j):
        return (torch.remainder(j, self.stride) >= self.stride - self.c) & (j == j)

    def parts(self, n, device=None):
        j = torch.arange(n, device=device)
        cols = j[torch.remainder(j, self.stride) >= self.stride - self.c]
        if cols.numel() == 0:
            return []
        bk = 64
        cols = torch.cat([cols, cols.new_full(((-len(cols)) % bk,), -1)])
        bq = 128
        q = padded_arange(n, bq, device)
        kv = torch.arange(cols.numel() // bk, device=device).expand(q.numel() // bq, -1).contiguous()
        return [Part(q, cols, kv, bq, bk, self.mask, identity_q=True)]


@dataclass
class Pattern:
    """A union of components, optionally intersected with causality (key j visible only if j <= i)."""

    components: list = field(default_factory=list)
    is_causal: bool = False

    def __or__(self, other) -> "Pattern":
        other = other.to_pattern() if isinstance(other, Component) else other
        return Pattern(list(self.components) + list(other.components), self.is_causal or other.is_causal)

    def to_pattern(self) -> "Pattern":
        return self

    def causal(self) -> "Pattern":
        """This pattern intersected with the causal mask."""
        return Pattern(list(self.components), True)

    def mask_fn(self, n: int, device=None) -> MaskFn:
        """Whether key position ``j`` is visible from query position ``i`` at length ``n`` (a pure,
        broadcasting function of two position tensors)."""
        fns = [c.mask_fn(n, device) for c in self.components]
        causal = self.is_causal

        def mask(i: Tensor, j: Tensor) -> Tensor:
            m = fns[0](i, j)
            for f in fns[1:]:
                m = m | f(i, j)
            return m & (j <= i) if causal else m

        return mask

    def dense_mask(self, n: int, device=None) -> Tensor:
        """The (n, n) boolean mask this pattern implements (True = attend). Tests and pictures only."""
        i = torch.arange(n, device=device)
        return self.mask_fn(n, device)(i[:, None], i[None, :])

    def parts(self, n: int, device=None) -> list[Part]:
        """Kernel plans for length ``n`` (their union covers exactly ``mask_fn(n)``'s pairs)."""
        fused = self._fused(n, device)
        out: list[Part] = []
        if fused is not None:
            part, members = fused
            out.append(part)
        for c in self.components:
            out.extend(c.rest_parts(n, device) if fused is not None and c in members else c.parts(n, device))
        return out

    def _fused(self, n: int, device=None) -> tuple[Part, list] | None:
        """One plan for the block-granular components that share a block size (BigBird's window,
        global columns and random blocks): per query block the union of their key blocks, each listed
        once, so every pair is computed once and no partial softmaxes need merging."""
        sizes = [c.block_size for c in self.components if isinstance(c, (BlockLocal, RandomBlocks))]
        if not sizes:
            return None
        block = sizes[0]
        found = [(c, c.key_blocks(n, block, device)) for c in self.components]
        found = [(c, kb) for c, kb in found if kb is not None]
        if len(found) < 2:
            return None
        kv = torch.cat([kb[0] for _, kb in found], 1).sort(1).values
        dup = torch.zeros_like(kv, dtype=torch.bool)
        dup[:, 1:] = kv[:, 1:] == kv[:, :-1]
        kv = torch.where(dup | (kv < 0), torch.iinfo(kv.dtype).max, kv).sort(1).values  # unique, -1 last
        kv = _trim(torch.where(kv == torch.iinfo(kv.dtype).max, -1, kv))
        masks = [kb[1] for _, kb in found]

        def covered(i: Tensor, j: Tensor) -> Tensor:
            m = masks[0](i, j)
            for f in masks[1:]:
                m = m | f(i, j)
            return m

        pos = padded_arange(n, block, device)
        part = Part(pos, pos, kv, block, block, covered, identity_q=True, identity_k=True, exact=True)
        return part, [c for c, _ in found]

    def block_layout(self, n: int, block: int) -> Tensor:
        """(nb, nb) bool: which (query block, key block) pairs hold at least one visible pair.
        Computed block row by block row, never as an (n, n) mask."""
        mask = self.mask_fn(n)
        nb = math.ceil(n / block)
        out = torch.zeros(nb, nb, dtype=torch.bool)
        j = torch.arange(n)
        for b in range(nb):
            i = torch.arange(b * block, min(n, (b + 1) * block))
            m = mask(i[:, None], j[None, :]).any(0)
            out[b] = torch.nn.functional.pad(m, (0, nb * block - n)).view(nb, block).any(1)
        return out

    def mask_mod(self, n: int, device=None, key_padding_mask: Tensor | None = None):
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for this pattern at length ``n``."""
        mask = self.mask_fn(n, device)

        def mask_mod(b, h, q_idx, kv_idx):
            m = mask(q_idx, kv_idx)
            if key_padding_mask is not None:
                m = m & ~key_padding_mask[b, kv_idx]
            return m

        return mask_mod

    def __repr__(self) -> str:
        inner = " | ".join(repr(c) for c in self.components)
        return f"Pattern({inner}{', causal' if self.is_causal else ''})"


def count_pairs(attn: PatternAttention, n: int, *, chunk_elements: int = 1 << 24) -> tuple[int, int]:
    """Visible (query, key) pairs of a pattern variant at length ``n``, and the pairs its blocks compute.

    ``attn`` is a :class:`core_attn.attention.base.PatternAttention` (anything with ``pattern(n)`` and
    ``parts(n, device)``); the benchmark harness and the apps' benchmarks count a variant's pairs with it.

    Enumerates ``attn.parts(n)`` block by block like :func:`core_attn.kernels.pattern_attention`: each
    part's mask is evaluated on its visited blocks only, pairs owned by earlier parts are excluded, and
    causality is honoured, so no N x N mask is built. Per head; equals ``attn.dense_mask(n).sum()``.

    Returns:
        ``(visible, computed)``: ``computed`` counts every slot of every block the kernel multiplies
        (``kv_index`` columns x block_q x block_k, padding and -1 slots included).
    """
    pattern = attn.pattern(n)
    parts = attn.parts(n, "cpu")
    visible = computed = 0
    for p, part in enumerate(parts):
        if part.q_pos.dim() != 1 or part.k_pos.dim() != 1:
            raise ValueError("count_pairs needs positions shared by batch and heads (1-D q_pos/k_pos)")
        earlier = [pp.mask for pp in parts[:p]]
        bq, bk = part.block_q, part.block_k
        q_blocks = part.q_pos.view(-1, bq)  # (nqb, bq)
        k_blocks = part.k_pos.view(-1, bk)  # (nkb, bk)
        kv = part.kv_index  # (nqb, C)
        computed += kv.numel() * bq * bk
        step = max(1, chunk_elements // max(1, bq * kv.shape[1] * bk))
        for s in range(0, kv.shape[0], step):
            idx = kv[s:s + step]
            kp = torch.where((idx >= 0)[..., None], k_blocks[idx.clamp(min=0)], -1).flatten(-2)  # (c, C*bk)
            i, j = q_blocks[s:s + step, :, None], kp[:, None, :]  # (c, bq, 1), (c, 1, C*bk)
            m = part.mask(i, j) & (i >= 0) & (j >= 0)
            for em in earlier:  # each pair belongs to the first part that visits it
                m = m & ~em(i, j)
            if pattern.is_causal:
                m = m & (j <= i)
            visible += int(m.sum())
    return visible, computed
