"""The plain attention everything is tested against: ``softmax(Q K^T / sqrt(d) + mask) V``.

Never optimised, never used on a hot path: it materialises the full (N, N) score matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                        key_padding_mask: Tensor | None = None, causal: bool = False,
                        scale: float | None = None) -> Tensor:
    """Dense attention in fp32 (or fp64) math.

    Args:
        q, k, v: (B, H, Nq, D), (B, H, Nk, D), (B, H, Nk, Dv).
        mask: bool, broadcastable to (B, H, Nq, Nk); True = attend.
        key_padding_mask: (B, Nk) bool, True = padding (ignored key).
        causal: hide key j from query i when j > i.
        scale: defaults to 1 / sqrt(D).

    Returns:
        (B, H, Nq, Dv) in q's dtype; a query with no visible key gets zeros (SDPA would give NaN).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 math for half types, fp64 stays fp64
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    allowed = torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(s.shape[-1] - s.shape[-2])
    allowed = allowed.expand_as(s)
    if mask is not None:
        allowed = allowed & mask
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.matmul(p, v.to(acc)).to(q.dtype)
