"""Adaptive attention span: each head learns how far back (and ahead) it looks.

Sukhbaatar, Grave, Bojanowski & Joulin 2019, "Adaptive Attention Span in Transformers", arXiv:1905.07799.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_attn.attention.base import AttentionBase, autocast_inputs, check_qkv
from core_attn.registry import register_attention
from core_attn.validation import check_float, check_int


def span_mask(dist: Tensor, span: Tensor, ramp: int) -> Tensor:
    """The paper's soft mask ``m(x) = clamp((R + z - x) / R, 0, 1)``.

    Args:
        dist: distances ``x`` between query and key (any shape, broadcast against ``span``).
        span: the spans ``z`` in tokens, one per head, shaped to broadcast (e.g. (H, 1, 1)).
        ramp: the ramp length ``R``.
    """
    return ((ramp + span - dist) / ramp).clamp(0.0, 1.0)


def soft_band_attention(q: Tensor, k: Tensor, v: Tensor, span: Tensor, ramp: int, width: int, *, causal: bool,
                        block: int, key_padding_mask: Tensor | None = None) -> Tensor:
    """Softmax attention weighted by the soft span mask, computed on a band of ``width`` keys per side.

    The weight of key j for query i is ``m(|i - j|) exp(s_ij) / sum_l m(|i - l|) exp(s_il)`` (the paper's
    masked and renormalised softmax; ``m`` from :func:`span_mask`), computed as a softmax of ``s + log m``.
    Queries run in blocks of ``block``; each block reads the keys from ``width`` (rounded up to a block)
    before its first query to as far after its last one (none when causal), through a strided window view,
    so scores, time and memory are O(N (width + block)), never N x N. Exact as long as ``width`` covers every
    distance where ``m > 0`` (``ceil(max(span) + ramp) - 1``); autograd gives the gradients, ``span``'s too.

    Args:
        q, k, v: (B, H, N, D), (B, H, N, D), (B, H, N, Dv).
        span: (H,) spans in tokens.
        ramp: the ramp length R of the soft mask.
        width: the largest distance to compute (keys beyond it get no weight).
        causal: hide future keys (distance ``i - j``); otherwise the mask is symmetric in ``|i - j|``.
        block: queries per block.
        key_padding_mask: (B, N) bool, True = padding.

    Returns:
        (B, H, N, Dv) in q's dtype; a query that sees no key gets zeros.
    """
    b, h, n, d = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 softmax statistics for half types
    nqb = math.ceil(n / block)
    npad = nqb * block
    left = math.ceil(min(width, n - 1) / block) * block  # keys before a block's first query
    right = 0 if causal else left
    win = left + block + right
    pads = (0, 0, left, npad - n + right)
    kw = F.pad(k, pads).unfold(2, win, block)  # (B, H, nqb, D, win): a view, no copy
    vw = F.pad(v, pads).unfold(2, win, block)  # (B, H, nqb, Dv, win)
    qb = F.pad(q, (0, 0, 0, npad - n)).view(b, h, nqb, block, d)
    s = torch.matmul(qb.to(acc) * (1.0 / math.sqrt(d)), kw.to(acc))  # (B, H, nqb, block, win)
    # query r * block + a and key r * block - left + w are i - j = a + left - w apart, in every block
    ar = torch.arange(block, device=q.device)
    wr = torch.arange(win, device=q.device)
    rel = (ar[:, None] + left - wr[None, :]).to(acc)  # (block, win)
    m = span_mask(rel if causal else rel.abs(), span.to(acc)[:, None, None], ramp)  # (H, block, win)
    visible = m > 0
    if causal:
        visible = visible & (rel >= 0)
    # log m where visible, 0 elsewhere: every hidden pair is hidden by masked_fill below, whose backward
    # gives it a zero gradient (NaN from a row that sees no key cannot reach q, k or the spans)
    bias = torch.where(visible, m, torch.ones_like(m)).log()
    jpos = torch.arange(nqb, device=q.device)[:, None] * block - left + wr[None, :]  # (nqb, win)
    # keys outside the sequence; a padding query row (i >= n, cut off below) keeps its own (zero) key, so
    # without a key padding mask every row sees a key and the softmax needs no NaN guard
    hidden = ((jpos < 0) | (jpos >= n))[:, None, :] & (rel != 0)  # (nqb, block, win)
    if key_padding_mask is not None:
        padw = F.pad(key_padding_mask.to(torch.bool), (left, npad - n + right), value=True).unfold(1, win, block)
        hidden = hidden | padw[:, None, :, None, :]  # (B, 1, nqb, block, win)
    s = (s + bias[:, None]).masked_fill(~visible[:, None], float("-inf")).masked_fill(hidden, float("-inf"))
    p = torch.softmax(s, -1)
    if key_padding_mask is not None:  # a query whose visible keys are all padding: zeros, not NaN
        p = p.nan_to_num(0.0)
    out = torch.matmul(p, vw.to(acc).transpose(-1, -2))  # (B, H, nqb, block, Dv)
    return out.reshape(b, h, npad, -1)[:, :, :n].to(q.dtype)


@register_attention("adaptive_span")
class AdaptiveSpanAttention(AttentionBase):
    """Each head h learns a span ``z_h = max_span * f_h`` (``f_h`` in [0, 1], a parameter); key j gets the
    soft weight ``m(x) = clamp((ramp + z_h - x) / ramp, 0, 1)`` at distance ``x = i - j`` (causal) or
    ``|i - j|``, applied to the softmax probabilities, which are then renormalised (the paper's eq. 3).
    ``span_loss()`` is the paper's L1 penalty, ``span_penalty * mean_h(z_h)``, for the training loss (the
    apps add :func:`total_span_loss` of the network); training also clamps ``f`` back into [0, 1] before
    each forward, as the paper does after each step.

    The cost follows the learned spans: each call computes a band of ``ceil(max_h z_h + ramp) - 1`` keys per
    side (rounded up to a block), the largest span over heads, not ``max_span`` (while tracing or exporting,
    where the spans cannot be read, the band is ``max_span + ramp - 1``). Heads with shorter spans get zero
    weight on the rest of the band.

    Args:
        num_heads: heads H (filled in by the layer); one span per head.
        max_span: S, the largest span a head can learn.
        ramp: R, the length of the soft ramp (the paper uses 32).
        span_init: initial ``f`` of every head, in [0, 1] (the paper starts at 0: spans grow if useful).
        span_penalty: weight of the L1 penalty per token of mean span (the paper uses 2e-6 per layer).
        causal: hide future keys.
        block_size: queries per block (default: 32, or 64 for bands of 192 keys or more).

    Time O(N (z + R) D), memory O(N (z + R)), z the largest learned span.
    """

    exact = True  # the paper's soft-masked softmax, computed exactly (no approximation)
    # BLOCK_RULE: queries per block, 32 below a band of 192 keys, 64 from there. Measured fwd+bwd, B 1, H 8,
    # D 64, N 4096, 1 thread (AMD EPYC): band 95: 331 / 572 ms (blocks of 32 / 64), band 63: 205 / 255 ms,
    # band 287: 1299 / 1241 ms; blocks of 16 were 2-4x slower (small matmuls)
    time_complexity = "O(N (z+R))"
    memory_complexity = "O(N (z+R))"
    summary = "learned per-head span, soft ramp mask (Adaptive Span)"
    exactness = "yes (its soft-masked softmax)"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"max_span": window, "span_init": 1.0}  # the largest spans: window + ramp - 1 keys each side

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        """4 D per pair of positive mask weight: ``ceil(z + R) - 1`` keys each side (before the query only
        when causal) plus the query's own, z = span_init x max_span."""
        if "max_span" not in settings:
            return None
        z = settings.get("span_init", 0.0) * settings["max_span"]
        side = min(n - 1, math.ceil(z + settings.get("ramp", 32)) - 1)
        return 4.0 * head_dim * n * (side * (1 if settings.get("causal", False) else 2) + 1)

    def __init__(self, *, num_heads: int, max_span: int = 256, ramp: int = 32, span_init: float = 0.0,
                 span_penalty: float = 0.0, causal: bool = False, block_size: int | None = None):
        super().__init__(causal=causal)
        self.num_heads = check_int("num_heads", num_heads, min_value=1)
        self.max_span = check_int("max_span", max_span, min_value=1)
        self.ramp = check_int("ramp", ramp, min_value=1)
        self.span_penalty = check_float("span_penalty", span_penalty, min_value=0.0)
        self.block_size = None if block_size is None else check_int("block_size", block_size, min_value=8)
        init = check_float("span_init", span_init, min_value=0.0, max_value=1.0)
        self.span_fraction = nn.Parameter(torch.full((num_heads,), init))  # f_h; z_h = max_span * f_h

    def spans(self) -> Tensor:
        """(H,) the current spans z_h in tokens (differentiable)."""
        return self.span_fraction.clamp(0.0, 1.0) * self.max_span

    def span_loss(self) -> Tensor:
        """The L1 span penalty ``span_penalty * mean_h(z_h)`` (a scalar tensor; 0 when the weight is 0)."""
        return self.span_penalty * self.spans().mean()

    def band(self) -> int:
        """The keys per side this call computes: ``ceil(max_h z_h + ramp) - 1``, or the maximum while
        tracing or exporting."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return self.max_span + self.ramp - 1
        return math.ceil(float(self.spans().detach().max()) + self.ramp) - 1

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """q, k, v: (B, H, N, D) -> (B, H, N, Dv)."""
        check_qkv(q, k, v, key_padding_mask, self_attention=True)
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q, k, v have H={q.shape[1]} heads but num_heads={self.num_heads} sized the spans")
        if self.training and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            with torch.no_grad():  # projected gradient descent, as the paper: f stays in [0, 1]
                self.span_fraction.data.clamp_(0.0, 1.0)
        q, k, v = autocast_inputs(q, k, v)
        width = self.band()
        block = self.block_size or (64 if width >= 192 else 32)  # the measured rule above (BLOCK_RULE)
        with torch.autocast(q.device.type, enabled=False):
            return soft_band_attention(q, k, v, self.spans(), self.ramp, width, causal=self.causal, block=block,
                                       key_padding_mask=key_padding_mask)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, max_span={self.max_span}, ramp={self.ramp}, "
                f"span_penalty={self.span_penalty}, causal={self.causal}")


def total_span_loss(module: nn.Module) -> Tensor | float:
    """The sum of ``span_loss()`` over every :class:`AdaptiveSpanAttention` inside ``module`` (0.0 when none):
    what a training step adds to its loss."""
    losses = [m.span_loss() for m in module.modules() if isinstance(m, AdaptiveSpanAttention) and m.span_penalty > 0]
    return torch.stack(losses).sum() if losses else 0.0


def learned_spans(module: nn.Module) -> list[Tensor]:
    """The learned spans in tokens, one (H,) tensor (detached) per :class:`AdaptiveSpanAttention` in ``module``,
    in module order (empty when there is none)."""
    return [m.spans().detach() for m in module.modules() if isinstance(m, AdaptiveSpanAttention)]


def mean_span(module: nn.Module) -> float | None:
    """The mean learned span in tokens over every head of every :class:`AdaptiveSpanAttention` in ``module``
    (``None`` when there is none)."""
    spans = learned_spans(module)
    return float(torch.cat(spans).mean()) if spans else None
