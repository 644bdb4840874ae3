"""Dense softmax attention through ``torch.nn.functional.scaled_dot_product_attention``: the baseline.

Vaswani et al. 2017, "Attention Is All You Need".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from core_attn.attention.base import AttentionBase, check_qkv
from core_attn.registry import register_attention


@register_attention("dense")
class DenseAttention(AttentionBase):
    """Full attention, O(N^2) time; SDPA's fused CPU/GPU kernels keep memory O(N) where no mask is
    given. A query whose keys are all padding gets zeros (SDPA alone would return NaN).

    Args:
        causal: hide future keys.
        dropout: attention dropout probability (training only).
    """

    exact = True
    time_complexity = "O(N^2)"
    memory_complexity = "O(N) fused, O(N^2) with a padding mask"
    summary = "softmax attention, torch SDPA (baseline)"

    def __init__(self, *, causal: bool = False, dropout: float = 0.0):
        super().__init__(causal=causal)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} is out of range; expected 0 <= dropout < 1")
        self.dropout = dropout

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        check_qkv(q, k, v, key_padding_mask)
        p = self.dropout if self.training else 0.0
        if key_padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        allowed = ~key_padding_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, Nk)
        if self.causal:
            nq, nk = q.shape[2], k.shape[2]
            tri = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
            allowed = allowed & tri
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        dead = ~allowed.any(-1, keepdim=True)  # (B, 1, Nq|1, 1): rows with no visible key
        return out.masked_fill(dead, 0.0)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, dropout={self.dropout}"
