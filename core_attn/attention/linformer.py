"""Linformer: keys and values projected along the sequence to k rows, then softmax attention.

Wang, Li, Khabsa, Fang & Ma 2020, "Linformer: Self-Attention with Linear Complexity", arXiv:2006.04768.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from core_attn.attention.base import AttentionBase, autocast_inputs, check_qkv
from core_attn.registry import register_attention
from core_attn.validation import check_int


@register_attention("linformer")
class LinformerAttention(AttentionBase):
    """Linformer attention (Wang et al. 2020): ``softmax(Q (E K)^T / sqrt(d)) (F V)`` with learnable
    sequence projections E, F of shape (k, max_seq_len).

    Shorter inputs: for N < ``max_seq_len`` keys the first N columns of E and F are used
    (``E[:, :N]``), which is how the authors' reference implementation (fairseq,
    ``examples/linformer``: ``compress_k.weight[:, 0:tgt_len]``) handles them; positions are tied to
    columns, so position j always meets column j. Longer inputs raise ``ValueError``.

    Initialisation follows that reference implementation: Xavier-uniform with gain 1/sqrt(2) (bound
    ``sqrt(3 / (k + max_seq_len))``, comparable to ``nn.Linear(max_seq_len, k)``'s default).

    Padding keys (``key_padding_mask``) are zeroed in K and V before projecting, so they contribute
    nothing to any projected key or value; the k projected rows are always attended.

    Not causal: each projected key is a weighted sum over all positions, future ones included, so no
    causal mask can be applied after projecting (``causal=True`` raises).

    Mixed precision: the projections and matmuls run in the input (autocast) dtype, the softmax in
    float32 (float64 for float64 inputs).

    Args:
        max_seq_len: L, the longest key sequence (number of columns of E and F).
        k: number of projected rows (the paper's k).
        share_kv: use one projection for keys and values (F = E).
        causal: must be False (see above).

    Complexity (N: sequence length, k: projected length, d: head dim): time O(N k d), memory O(N k)
    (the (N, k) attention weights); no (N, N) tensor.
    """

    exact = False
    time_complexity = "O(N k d)"
    memory_complexity = "O(N k)"
    summary = "low-rank projection of keys/values (Linformer)"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"k": window}

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        """8 N k D: project K and V, scores, PV."""
        return 8.0 * n * settings["k"] * head_dim if "k" in settings else None

    def __init__(self, *, max_seq_len: int, k: int = 256, share_kv: bool = False, causal: bool = False):
        super().__init__(causal=causal)
        if causal:
            raise ValueError(
                "causal=True is not supported by linformer: its projections E, F mix every position of the "
                "sequence into each projected key and value, future positions included, so no causal mask can "
                "be applied; use causal=False, or a causal variant such as 'linear'"
            )
        self.max_seq_len = check_int("max_seq_len", max_seq_len, min_value=1)
        self.k = check_int("k", k, min_value=1)
        if not isinstance(share_kv, bool):
            raise ValueError(f"share_kv={share_kv!r} must be a bool")
        self.share_kv = share_kv
        self.proj_k = nn.Parameter(torch.empty(self.k, self.max_seq_len))  # E: (k, L)
        self.proj_v = None if share_kv else nn.Parameter(torch.empty(self.k, self.max_seq_len))  # F: (k, L)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform with gain 1/sqrt(2), as the authors' fairseq implementation."""
        for p in (self.proj_k, self.proj_v):
            if p is not None:
                nn.init.xavier_uniform_(p, gain=1 / math.sqrt(2))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        check_qkv(q, k, v, key_padding_mask)
        n = k.shape[2]
        if n > self.max_seq_len:
            raise ValueError(
                f"key sequence length N={n} exceeds max_seq_len={self.max_seq_len}; build LinformerAttention "
                f"with max_seq_len >= {n}"
            )
        q, k, v = autocast_inputs(q, k, v)
        with torch.autocast(q.device.type, enabled=False):
            if key_padding_mask is not None:
                keep = ~key_padding_mask.to(torch.bool)[:, None, :, None]  # (B, 1, N, 1)
                k, v = k * keep, v * keep
            e = self.proj_k[:, :n].to(k.dtype)  # (k, N)
            f = e if self.proj_v is None else self.proj_v[:, :n].to(v.dtype)
            k_proj = torch.matmul(e, k)  # (B, H, k, D)
            v_proj = torch.matmul(f, v)  # (B, H, k, Dv)
            acc = torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 (fp64 for fp64 inputs)
            scores = torch.matmul(q, k_proj.transpose(-1, -2)).to(acc) / math.sqrt(q.shape[-1])  # (B, H, Nq, k)
            p = torch.softmax(scores, -1).to(v_proj.dtype)
            return torch.matmul(p, v_proj)  # (B, H, Nq, Dv)

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, k={self.k}, share_kv={self.share_kv}"
