"""Two-level hierarchical attention: exact attention inside segments plus attention between segment
summaries, inspired by H-Transformer-1D (Zhu & Soricut 2021, "H-Transformer-1D: Fast One-Dimensional
Hierarchical Attention for Sequences", arXiv:2107.11906).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from core_attn.attention.base import AttentionBase, autocast_inputs, check_qkv
from core_attn.kernels import pattern_attention
from core_attn.patterns import BlockDiagonal, Pattern
from core_attn.registry import register_attention
from core_attn.validation import check_int


def _summary_softmax(q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> Tensor:
    """Dense ``softmax(q k^T / sqrt(D)) v`` over ``visible`` (broadcast to (B, H, S, S)); a summary that
    sees nothing gets zeros, with finite gradients."""
    s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, S, S)
    s = s.masked_fill(~visible, float("-inf"))
    mx = s.amax(-1, keepdim=True).detach()  # the shift cancels: detaching it is exact
    mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    p = torch.exp(s - mx)  # 0 where hidden
    den = p.sum(-1, keepdim=True)
    return torch.matmul(p, v) / torch.where(den > 0, den, torch.ones_like(den))  # not a tiny clamp: 0 * inf


@register_attention("hierarchical")
class HierarchicalAttention(AttentionBase):
    """Local attention within segments plus one level of attention between segment summaries.

    Not the full H-Transformer-1D (which builds a log(N)-level hierarchy of coarsened attention
    matrices with numerical-analysis style interpolation); this is its two-level idea, stated plainly:

    1. Level 1: exact softmax attention inside each segment of ``segment_size`` consecutive tokens
       (block diagonal; causal within the segment when ``causal``), run by the block-sparse kernel.
    2. Level 2: each segment is summarised by the means of its q, k and v over its non-padded tokens;
       the summaries attend to each other densely (``N / s`` of them). With ``causal``, the summary
       query of segment ``c`` would average queries of tokens that come after some of the tokens it
       serves, so segment ``c`` uses the summary query of segment ``c - 1`` instead and sees the
       summaries of segments ``< c`` only (strictly): nothing from the future reaches a token.
    3. Every token adds its segment's level-2 output: ``out_i = local_i + summary_out[seg(i)]``.

    The two levels are summed, not renormalised together, so this is not a softmax over one set of
    keys (``exact = False``); distant tokens interact only through segment means.

    ``N`` is padded to a multiple of ``segment_size``; padded and ``key_padding_mask`` tokens are left
    out of the level-1 keys and of the means, and a segment with no real token is hidden as a summary.

    Args:
        segment_size: tokens per segment ``s``.
        causal: hide future tokens at both levels.

    Cost: ``O(N s)`` for level 1 plus ``O((N / s)^2)`` for level 2 (linear in N while ``N <= s^2``).
    """

    exact = False
    time_complexity = "O(N s + (N/s)^2)"
    memory_complexity = "O(N s + (N/s)^2)"
    summary = "within segments + across segment summaries"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"segment_size": window}

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        """4 D per pair of N s (within segments) + (N / s)^2 (between summaries)."""
        if "segment_size" not in settings:
            return None
        s = settings["segment_size"]
        return 4.0 * head_dim * (n * s + math.ceil(n / s) ** 2)

    def __init__(self, *, segment_size: int = 128, causal: bool = False):
        super().__init__(causal=causal)
        self.segment_size = check_int("segment_size", segment_size, min_value=1)
        pattern = Pattern([BlockDiagonal(segment_size)])
        self._pattern = pattern.causal() if causal else pattern
        self._parts: dict = {}

    def _local(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        n = q.shape[2]
        key = (n, str(q.device))
        if key not in self._parts:
            self._parts[key] = self._pattern.parts(n, q.device)
        return pattern_attention(q, k, v, self._pattern, key_padding_mask, parts=self._parts[key])

    def summaries(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Level 2: (B, H, N / s, Dv), the output every token of a segment adds."""
        b, h, n, _ = q.shape
        s = self.segment_size
        n_seg = math.ceil(n / s)
        real = torch.ones(b, n, dtype=q.dtype, device=q.device)
        if key_padding_mask is not None:
            real = (~key_padding_mask.to(torch.bool)).to(q.dtype)
        real = F.pad(real, (0, n_seg * s - n))  # (B, N_pad): 1 = real token
        count = real.view(b, 1, n_seg, s).sum(-1)  # (B, 1, S)

        def mean(x):  # (B, H, N, D) -> (B, H, S, D), over each segment's real tokens
            x = F.pad(x, (0, 0, 0, n_seg * s - n)) * real[:, None, :, None]
            return x.view(b, h, n_seg, s, -1).sum(3) / count.clamp_min(1)[..., None]

        qm, km, vm = mean(q), mean(k), mean(v)
        visible = (count > 0)[:, :, None, :]  # (B, 1, 1, S): a segment with real tokens is a key
        if self.causal:
            qm = F.pad(qm, (0, 0, 1, 0))[:, :, :n_seg]  # segment c asks with the query of segment c - 1
            idx = torch.arange(n_seg, device=q.device)
            visible = visible & (idx[None, :] < idx[:, None])  # strictly earlier segments
        return _summary_softmax(qm, km, vm, visible)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """q, k, v: (B, H, N, D), (B, H, N, D), (B, H, N, Dv) -> (B, H, N, Dv)."""
        check_qkv(q, k, v, key_padding_mask, self_attention=True)
        q, k, v = autocast_inputs(q, k, v)
        n = q.shape[2]
        with torch.autocast(q.device.type, enabled=False):
            local = self._local(q, k, v, key_padding_mask)  # (B, H, N, Dv)
            acc = torch.float64 if q.dtype == torch.float64 else torch.float32
            summary = self.summaries(q.to(acc), k.to(acc), v.to(acc), key_padding_mask)  # (B, H, S, Dv)
            seg = torch.arange(n, device=q.device) // self.segment_size
            return local + summary.index_select(2, seg).to(local.dtype)

    def extra_repr(self) -> str:
        return f"segment_size={self.segment_size}, causal={self.causal}"
