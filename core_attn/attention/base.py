"""Base classes shared by every attention variant.

Every variant maps ``(q, k, v)`` of shape (B, H, N, D) to (B, H, N, Dv); the parent layer owns the
projections (torchtune's builder habit), so any layer can take any variant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_attn.patterns import Pattern
from core_attn.validation import check_choice

BACKENDS = ("auto", "blocked", "native", "flex", "dense", "banded")


def check_qkv(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, *, self_attention: bool = False) -> None:
    """Raise ``ValueError`` when q, k, v and the key padding mask do not fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D); got {tuple(t.shape)}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"mismatched shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; expected "
            "q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv)"
        )
    if self_attention and q.shape[2] != k.shape[2]:
        raise ValueError(f"this variant is self-attention: q has N={q.shape[2]} but k has N={k.shape[2]}")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
        raise ValueError(
            f"key_padding_mask must have shape (B, N) = {(k.shape[0], k.shape[2])}; got {tuple(key_padding_mask.shape)}"
        )


def autocast_inputs(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Cast to the autocast dtype when autocast is on, so custom kernels run in the mixed precision the
    user asked for (autocast does not reach inside custom autograd functions)."""
    dev = tensors[0].device.type
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)
    dtype = torch.promote_types(tensors[0].dtype, tensors[1].dtype)
    return tuple(t.to(dtype) for t in tensors)


class AttentionBase(nn.Module):
    """Every variant: ``forward(q, k, v, key_padding_mask=None) -> out``.

    Class attributes and class methods (README's variant table and ``python -m core_attn.bench`` read
    them, so a new variant is its file and its ``conf/attention/<name>.yaml``):
        name: the registry key.
        summary: one line for the table's "family" column (the method and the paper).
        exact: True when the variant computes exact softmax attention over a sparsity pattern.
        exactness: the table's "exact?" cell when "yes" / "approximate" (from ``exact``) says too little.
        time_complexity / memory_complexity: in N for training (forward + backward).
        bench_settings(window): hyper-parameters at the benchmark's pattern budget ``--window``.
        flops_per_head(n, head_dim, settings): the forward FLOP model of the attention itself.
    """

    name: str = "?"
    summary: str = ""
    exact: bool = False
    exactness: str = ""
    time_complexity: str = "O(N^2)"
    memory_complexity: str = "O(N^2)"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        """Hyper-parameters the benchmark builds this variant with at pattern budget ``window`` (its
        ``--window``: local sees 2 window + 1 keys per query); ``{}`` runs the defaults."""
        return {}

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        """Forward FLOPs of one head's attention at length ``n`` built with ``settings`` (projections
        excluded); ``None`` when not modelled (the benchmark reports "n/a"). Pattern variants and
        ``dense`` need none: the benchmark counts 4 ``head_dim`` per visible (query, key) pair."""
        return None

    def __init__(self, *, causal: bool = False):
        super().__init__()
        if not isinstance(causal, bool):
            raise ValueError(f"causal={causal!r} must be a bool")
        self.causal = causal

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class PatternAttention(AttentionBase):
    """A variant that computes exact softmax attention over a sparsity :class:`Pattern`.

    Backends:
        ``blocked``: our eager block-sparse kernel (forward and backward, any device).
        ``native``: the compiled kernel of :mod:`core_attn.native`: an x86 CPU, fp32 (bf16 where the CPU has
        AVX512-BF16), padding only at the end of a sequence, and either a plain sliding window (:meth:`band`)
        or blocks of queries that see ranges of keys (:meth:`native_blocks`: BigBird); built on first use
        with the system C compiler.
        ``flex``: compiled FlexAttention with the pattern's ``BlockMask`` (no backward on CPU).
        ``dense``: SDPA with ``dense_mask(n)`` as an additive bias (:func:`masked_dense_attention`): O(N^2),
        for checking, for short inputs and for export (ONNX, torch.export).
        ``banded``: plain tensor ops over blocks of queries and the band of keys around them
        (:func:`banded_attention`): O(N w), traceable, for exporting a plain sliding window (:meth:`band`).
        ``auto``: ``dense`` when the pattern allows at least ``AUTO_DENSE_MIN_DENSITY`` of the score matrix
        (``AUTO_DENSE_MIN_DENSITY_SMALL_HEADS`` for heads of at most ``AUTO_DENSE_SMALL_HEAD_DIM`` channels)
        (short inputs, ``n <= AUTO_DENSE_MAX_N``: the same result, and the masked dense product beats block
        bookkeeping there) and on CUDA for any ``n <= AUTO_DENSE_MAX_N_CUDA``; else ``flex`` on CUDA (head
        dim >= 16), else ``native`` where it can run the input and ``blocked`` where not.
    """

    exact = True
    # auto's short-input rule, measured (docs/performance.md "Backends", benchmarks/short_inputs.py, fwd+bwd, one
    # thread): dense / blocked time crosses 1 at a density that grows with the head dimension: 0.22 (local window
    # 64 + a global token, B16 H4 D36), 0.3-0.55 (bigbird block 16, same shapes), 0.44 (local window 256, B8 H2
    # D32: 1.05) and 0.65 (local window 256, B1 H8 D64: 0.82 at 0.75, 1.17 at 0.56, 1.58 at 0.44)
    AUTO_DENSE_MIN_DENSITY = 0.6
    AUTO_DENSE_MIN_DENSITY_SMALL_HEADS = 0.3  # head dimension <= AUTO_DENSE_SMALL_HEAD_DIM
    AUTO_DENSE_SMALL_HEAD_DIM = 48
    AUTO_DENSE_MAX_N = 2048
    # On CUDA, inputs up to this length run dense whatever the density (docs/performance.md "On a GPU",
    # benchmarks/flex_lengths.py on an H200: local window 64, B 8, H 4, D 64, fwd+bwd, N 300-1,290: dense
    # 1.5-3.9 ms, flex 14-18 ms once compiled, and flex compiles for 8-12 s at every new length)
    AUTO_DENSE_MAX_N_CUDA = 1024

    def __init__(self, *, causal: bool = False, backend: str = "auto"):
        super().__init__(causal=causal)
        self.backend = check_choice("backend", backend, BACKENDS)
        self._parts_cache: dict = {}
        self._flex_cache: dict = {}

    # -- the pattern -------------------------------------------------------------------------------
    def pattern(self, n: int) -> Pattern:  # pragma: no cover - interface
        """The sparsity pattern at sequence length ``n``."""
        raise NotImplementedError

    def check_length(self, n: int) -> None:
        """Raise ``ValueError`` when the pattern does not fit a sequence of length ``n``."""

    def dense_mask(self, n: int) -> Tensor:
        """The (n, n) boolean mask (True = attend) this variant implements exactly."""
        self.check_length(n)
        return self.pattern(n).dense_mask(n)

    def _dense_mask_cached(self, n: int, device) -> Tensor:
        """The pattern's (n, n) mask for the dense backend, kept per length up to ``AUTO_DENSE_MAX_N`` (a
        longer one, 4 MB at n = 2048 and growing as n^2, is rebuilt per call as before)."""
        if n > self.AUTO_DENSE_MAX_N or torch.compiler.is_exporting() or torch.jit.is_tracing():
            # an export computes it in the graph (index comparisons) instead of storing n^2 bytes per layer
            return self.pattern(n).dense_mask(n, device)
        key = ("dense", n, str(device))
        if key not in self._parts_cache:
            self._parts_cache[key] = self.pattern(n).dense_mask(n, device)
        return self._parts_cache[key]

    def band(self) -> tuple[int, int] | None:
        """``(left, right)`` when the pattern is exactly a sliding window (query i sees keys i - left .. i +
        right, nothing else) at every length, else ``None``: what the ``banded`` backend needs."""
        return None

    def native_blocks(self, n: int) -> tuple[Tensor, int] | None:
        """For the ``native`` backend, a pattern that is whole blocks of queries seeing whole ranges of keys
        (plus causality): ``(ranges, query block size)`` as :func:`core_attn.native.run_blocks` takes them,
        else ``None`` (the default)."""
        return None

    def density(self, n: int) -> float:
        """Fraction of the (n, n) score matrix the pattern allows (builds the mask; not kept)."""
        return float(self.pattern(n).dense_mask(n).float().mean())

    def parts(self, n: int, device) -> list:
        key = (n, str(device))
        if key not in self._parts_cache:
            self._parts_cache[key] = self.pattern(n).parts(n, device)
        return self._parts_cache[key]

    # -- backends ----------------------------------------------------------------------------------
    def select_backend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> str:
        """The backend to run: ``self.backend``, or the best usable one for ``auto``; an unusable choice
        raises ``ValueError`` listing every backend and why it does or does not fit."""
        from core_attn import flex as flex_mod
        from core_attn import native

        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        band, blocks = self.band(), None
        if band is None and q.device.type == "cpu" and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            blocks = self.native_blocks(q.shape[-2])
        reasons = {"blocked": None, "dense": None,
                   "native": native.unusable_reason(q, k, v, key_padding_mask, band, blocks),
                   "flex": flex_mod.unusable_reason(q.device, grad, q.shape[-1]),
                   "banded": None if band is not None else native.NOT_A_BAND}
        if self.backend == "auto":
            n = q.shape[-2]
            key = ("auto", n, str(q.device), q.shape[-1])
            if key not in self._parts_cache:
                if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
                    return "blocked"  # a length never run eagerly: the density is not traceable
                least = (self.AUTO_DENSE_MIN_DENSITY_SMALL_HEADS if q.shape[-1] <= self.AUTO_DENSE_SMALL_HEAD_DIM
                         else self.AUTO_DENSE_MIN_DENSITY)
                short = (q.device.type == "cuda" and n <= self.AUTO_DENSE_MAX_N_CUDA) or (
                    n <= self.AUTO_DENSE_MAX_N and self.density(n) >= least)
                # short dense patterns: the masked dense kernel; else FlexAttention on CUDA, blocked on CPU
                longer = "flex" if q.device.type == "cuda" and reasons["flex"] is None else "blocked"
                self._parts_cache[key] = "dense" if short else longer
            choice = self._parts_cache[key]
            return "native" if choice == "blocked" and reasons["native"] is None else choice
        if reasons[self.backend] is not None:
            listing = "; ".join(f"{b}: {r or 'usable'}" for b, r in reasons.items())
            raise ValueError(f"backend={self.backend!r} cannot run this input ({listing})")
        return self.backend

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None, *,
                packed: Tensor | None = None) -> Tensor:
        """``packed``: optional (3, B, H, N, D) tensor whose ``unbind(0)`` is (q, k, v), e.g. a view of one
        qkv projection; the blocked backend then returns one gradient for it (no stack of three)."""
        check_qkv(q, k, v, key_padding_mask, self_attention=True)
        if packed is not None and (packed.shape[0] != 3 or packed.shape[1:] != q.shape or packed.dtype != q.dtype):
            raise ValueError(f"packed must have shape (3, *q.shape) = (3, {', '.join(map(str, q.shape))}) and "
                             f"q's dtype; got {tuple(packed.shape)}, {packed.dtype}")
        n = q.shape[2]
        self.check_length(n)
        q, k, v = autocast_inputs(q, k, v)
        backend = self.select_backend(q, k, v, key_padding_mask)
        if packed is not None and packed.dtype != q.dtype:  # autocast changed q: not packed any more
            packed = None
        with torch.autocast(q.device.type, enabled=False):
            if backend == "blocked":
                from core_attn.kernels import pattern_attention

                return pattern_attention(q, k, v, self.pattern(n), key_padding_mask, parts=self.parts(n, q.device),
                                         packed=packed)
            if backend == "native":  # select_backend checked the input: run it without checking again
                from core_attn.native import run_band, run_blocks

                band = self.band()
                if band is None:
                    return run_blocks(q, k, v, *self.native_blocks(n), causal=self.causal,
                                      key_padding_mask=key_padding_mask, packed=packed)
                return run_band(q, k, v, *band, key_padding_mask=key_padding_mask, packed=packed)
            if backend == "flex":
                from core_attn import flex as flex_mod

                return flex_mod.flex_pattern_attention(q, k, v, self.pattern(n), key_padding_mask, self._flex_cache)
            if backend == "banded":
                return banded_attention(q, k, v, *self.band(), key_padding_mask=key_padding_mask)
            return masked_dense_attention(q, k, v, self._dense_mask_cached(n, q.device), key_padding_mask)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, backend={self.backend!r}"


_FAR = -1e30  # a masked score: finite, so sums of a few stay finite and no row turns into NaN


def _bias(allowed: Tensor, dtype: torch.dtype, hidden: float) -> Tensor:
    """An additive mask: 0 where ``allowed``, ``hidden`` elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, hidden)


def masked_dense_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                           key_padding_mask: Tensor | None = None) -> Tensor:
    """The ``dense`` backend: SDPA over the whole (N, N) score matrix with ``mask`` (bool, True = attend,
    broadcastable to (B, H, N, N)) as an additive bias, in fp32 math as the reference; a query with no visible
    key gets zeros, as in :func:`core_attn.reference.reference_attention`.

    The bias is 0 / the most negative finite float, not -inf, so a row with no visible key stays finite (it
    is zeroed after) and an exported graph masks with one broadcast ``Add``. A boolean ``masked_fill`` +
    ``nan_to_num`` would export as ``Where`` and ``IsInf`` passes over every score, which onnxruntime runs
    slower than the matmuls (60 % of a ViT's time at 1024 patches).
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    allowed = mask if key_padding_mask is None else mask & ~key_padding_mask.to(torch.bool)[:, None, None, :]
    bias = _bias(allowed, acc, torch.finfo(acc).min)
    out = F.scaled_dot_product_attention(q.to(acc), k.to(acc), v.to(acc), attn_mask=bias)
    return (out * allowed.any(-1, keepdim=True).to(acc)).to(q.dtype)  # (.., N, 1): rows with a visible key


def banded_attention(q: Tensor, k: Tensor, v: Tensor, left: int, right: int,
                     key_padding_mask: Tensor | None = None, *, block: int = 64) -> Tensor:
    """Sliding-window attention (query i sees keys i - left .. i + right) from plain tensor ops: the
    ``banded`` backend, for graphs that are exported (ONNX, torch.export), where the blocked kernel cannot go.

    Queries in blocks of ``block``; each block gathers the ``block + left + right`` keys its rows can see
    (one ``Gather``), scores them with one batched matmul and masks the band's corners and the sequence ends
    with an additive bias. Time and memory O(N (block + left + right)) instead of the dense backend's
    O(N^2). Math in fp32 as the reference; a query with no visible key gets zeros.

    Args:
        q, k, v: (B, H, N, D), (B, H, N, D), (B, H, N, Dv).
        left, right: keys visible before / after each query.
        key_padding_mask: (B, N) bool, True = padding.
        block: queries per block.
    """
    b, h, n, _ = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    c = min(block, n)
    nb = -(-n // c)
    span = c + left + right
    tail = nb * c - n + right
    kp = F.pad(k.to(acc), (0, 0, left, tail))  # (B, H, left + N + tail, D): key j at row j + left
    vp = F.pad(v.to(acc), (0, 0, left, tail))
    rows = torch.arange(nb, device=q.device)[:, None] * c + torch.arange(span, device=q.device)  # (nb, span)
    qb = F.pad(q.to(acc), (0, 0, 0, nb * c - n)).reshape(b, h, nb, c, -1)
    # index_select: one Gather on the time axis, keys already (.., span, D), so the exported Q K^T is a
    # MatMul with a transposed B (advanced indexing exports a GatherND between 5-D permutes that onnxruntime
    # spends a quarter of a DNA model's time on)
    kb = kp.index_select(2, rows.reshape(-1)).reshape(b, h, nb, span, -1)
    s = torch.matmul(qb, kb.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, nb, c, span)
    r = torch.arange(c, device=q.device)[:, None]
    t = torch.arange(span, device=q.device)[None, :]
    in_band = (t >= r) & (t <= r + left + right)  # (c, span): the same for every block
    if key_padding_mask is None:
        keys = rows - left  # (nb, span): the key position in each slot
        real = ((keys >= 0) & (keys < n))[:, None]  # (nb, 1, span)
    else:
        real = ~F.pad(key_padding_mask.to(torch.bool), (left, tail), value=True)[:, rows][:, None, :, None]
    # two small biases added one after the other: an exported graph keeps them small instead of folding
    # their (nb, c, span) sum into a constant per layer
    s = s + _bias(in_band, acc, _FAR)
    s = s + _bias(real, acc, _FAR)
    p = torch.softmax(s, -1)
    if key_padding_mask is not None:  # rows with no visible key
        p = p * (in_band & real).any(-1, keepdim=True).to(acc)
    out = torch.matmul(p, vp.index_select(2, rows.reshape(-1)).reshape(b, h, nb, span, -1))  # (B, H, nb, c, Dv)
    return out.reshape(b, h, nb * c, -1)[:, :, :n].to(q.dtype)


def attention_prefixes(module: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes (``"net.encoder.blocks.0.attn.attention."``) of the attention variants inside
    ``module``: the keys under them are a variant's own parameters (spans, latents, projections), which
    checkpoint loaders let differ between variants."""
    return tuple(f"{name}." for name, sub in module.named_modules() if isinstance(sub, AttentionBase) and name)
