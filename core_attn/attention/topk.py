"""Top-k attention: each query keeps its k highest-scoring keys, the rest get zero weight.

Gupta, Dar, Goodman, Ciprut & Berant 2021, "Memory-efficient Transformers via Top-k Attention",
arXiv:2106.06899 (queries in chunks; the selection is content-based: it follows the learned q and k).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core_attn.attention.base import AttentionBase, autocast_inputs, check_qkv
from core_attn.registry import register_attention
from core_attn.validation import check_int


def _kept(s: Tensor, idx: Tensor, hidden_from: Tensor) -> Tensor:
    """Scores (B, H, c, N) with every key but the chosen ``idx`` (B, H, c, top) at -inf; chosen keys that
    were hidden (``hidden_from``: the block's scores after masking, -inf there) stay -inf."""
    chosen = torch.ones_like(idx, dtype=torch.bool)  # a tensor source: TorchScript traces no scalar scatter_
    keep = torch.zeros_like(s, dtype=torch.bool).scatter(-1, idx, chosen) & ~torch.isinf(hidden_from)
    return s.masked_fill(~keep, float("-inf"))


def _probs(kept: Tensor, lse: Tensor) -> Tensor:
    """exp(kept - lse), 0 on rows with no visible key (lse = -inf)."""
    return torch.exp(kept - lse.masked_fill(torch.isinf(lse), 0.0))


class _TopK(torch.autograd.Function):
    """Forward in blocks of queries, keeping the chosen indices and the log-sum-exp; the backward recomputes
    one block of scores at a time (FlashAttention's recompute scheme), so no (N, N) tensor is ever kept.
    Scores and products are dense matmuls of a block against all keys with the unchosen keys masked:
    on CPU this beats gathering the k chosen keys per query by far (gathers ran at ~1/20 of GEMM speed)."""

    @staticmethod
    def forward(ctx, q, k, v, top, causal, key_pad, scale, block):
        out, idx, lse = _topk_forward(q, k, v, top, causal, key_pad, scale, block)
        ctx.save_for_backward(q, k, v, out, idx, lse)
        ctx.meta = (top, causal, key_pad, scale, block)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, idx, lse = ctx.saved_tensors
        top, causal, key_pad, scale, block = ctx.meta
        n = q.shape[2]
        delta = (dout * out).sum(-1, keepdim=True)  # (B, H, N, 1): rowsum(dp * p), as FlashAttention
        dq = torch.empty_like(q)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        for r0 in range(0, n, block):
            r1 = min(n, r0 + block)
            s = _scores(q, k, r0, r1, causal, key_pad, scale)
            p = _probs(_kept(s, idx[:, :, r0:r1], s), lse[:, :, r0:r1])  # (B, H, c, N)
            gb = dout[:, :, r0:r1]
            ds = p * (torch.matmul(gb, v.transpose(-1, -2)) - delta[:, :, r0:r1])
            dq[:, :, r0:r1] = torch.matmul(ds, k) * scale
            dk += torch.matmul(ds.transpose(-1, -2), q[:, :, r0:r1]) * scale
            dv += torch.matmul(p.transpose(-1, -2), gb)
        return dq, dk, dv, None, None, None, None, None


def _scores(q: Tensor, k: Tensor, r0: int, r1: int, causal: bool, key_pad: Tensor | None, scale: float) -> Tensor:
    """Scores (B, H, c, N) of queries r0..r1-1 against every key, hidden keys (future, padding) at -inf."""
    s = torch.matmul(q[:, :, r0:r1], k.transpose(-1, -2)) * scale
    if causal:
        i = torch.arange(r0, r1, device=q.device)[:, None]
        s = s.masked_fill(torch.arange(k.shape[2], device=q.device)[None, :] > i, float("-inf"))
    if key_pad is not None:
        s = s.masked_fill(key_pad[:, None, None, :], float("-inf"))
    return s


def _topk_forward(q, k, v, top, causal, key_pad, scale, block):
    """(out (B, H, N, Dv), chosen key indices (B, H, N, top), lse (B, H, N, 1))."""
    b, h, n, _ = q.shape
    out = q.new_empty(b, h, n, v.shape[-1])
    idx = torch.empty(b, h, n, top, dtype=torch.long, device=q.device)
    lse = q.new_empty(b, h, n, 1)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        s = _scores(q, k, r0, r1, causal, key_pad, scale)
        ix = s.topk(top, dim=-1).indices  # hidden keys (-inf) are chosen only when a row has too few
        kept = _kept(s, ix, s)
        l = torch.logsumexp(kept, -1, keepdim=True)
        out[:, :, r0:r1] = torch.matmul(_probs(kept, l), v)
        idx[:, :, r0:r1], lse[:, :, r0:r1] = ix, l
    return out, idx, lse


@register_attention("topk")
class TopKAttention(AttentionBase):
    """Per query, softmax over its ``top_k`` highest-scoring visible keys; every other key gets zero weight
    (a row with fewer visible keys, early in a causal sequence, uses all it has). The pattern follows the
    content (the learned q and k), so it changes with the input and with training.

    Queries run in blocks of ``block_size``: a block scores all N keys, keeps its rows' k best and drops the
    rest, so memory is O(N k + N block) (the chosen indices and one block of scores), never N x N. Time is
    not sub-quadratic: selecting needs every score, and forward and backward multiply a block against all
    keys with the unchosen ones masked, O(N^2 D) each (the sparsity is in the weights, not in the cost).
    Ties at the k-th score are broken by ``torch.topk``.

    Args:
        top_k: keys kept per query.
        causal: hide future keys.
        block_size: queries per block (scores of one block: block x N per head).

    Time O(N^2 D), memory O(N k + N block).
    """

    exact = True  # exactly softmax over each row's top-k scores
    time_complexity = "O(N^2)"
    memory_complexity = "O(N k)"
    summary = "each query keeps its k best-scoring keys (content-based)"
    exactness = "yes (softmax over the top k)"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"top_k": 2 * window}

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        """Scoring every pair to select (2 D N^2) plus PV over the k kept keys (2 N k D)."""
        if "top_k" not in settings:
            return None
        return 2.0 * head_dim * n * n + 2.0 * head_dim * n * min(n, settings["top_k"])

    def __init__(self, *, top_k: int = 64, causal: bool = False, block_size: int = 128):
        super().__init__(causal=causal)
        self.top_k = check_int("top_k", top_k, min_value=1)
        self.block_size = check_int("block_size", block_size, min_value=1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """q, k, v: (B, H, N, D) -> (B, H, N, Dv)."""
        check_qkv(q, k, v, key_padding_mask, self_attention=True)
        q, k, v = autocast_inputs(q, k, v)
        acc = torch.promote_types(q.dtype, torch.float32)
        top = min(self.top_k, k.shape[2])
        key_pad = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
        scale = 1.0 / math.sqrt(q.shape[-1])
        with torch.autocast(q.device.type, enabled=False):
            qa, ka, va = (t.to(acc) for t in (q, k, v))
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
                out = _TopK.apply(qa, ka, va, top, self.causal, key_pad, scale, self.block_size)
            else:  # inference (and tracing, exporting): the same forward, nothing kept
                out = _topk_forward(qa, ka, va, top, self.causal, key_pad, scale, self.block_size)[0]
            return out.to(q.dtype)

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, causal={self.causal}, block_size={self.block_size}"

