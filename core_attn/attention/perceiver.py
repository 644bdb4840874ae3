"""Perceiver-style attention through a small learned latent array (Perceiver IO).

Jaegle et al. 2021, "Perceiver IO: A General Architecture for Structured Inputs & Outputs",
arXiv:2107.14795 (and "Perceiver: General Perception with Iterative Attention", arXiv:2103.03206).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_attn.attention.base import AttentionBase, autocast_inputs, check_qkv
from core_attn.kernels import block_sparse_attention
from core_attn.patterns import Part, padded_arange
from core_attn.registry import register_attention
from core_attn.validation import check_int

_BLOCK = 128  # kernel block for the long side (inputs); the latents form one block


def _all_pairs(i: Tensor, j: Tensor) -> Tensor:
    return (i >= 0) & (j >= 0)


def _attend(q: Tensor, k: Tensor, v: Tensor, key_pad: Tensor | None = None) -> Tensor:
    """Full softmax attention (B, H, Lq, D) x (B, H, Lk, D) -> (B, H, Lq, Dv) through the block kernel
    (recompute backward, so no (Lq, Lk) probabilities are kept); ``key_pad`` (B, Lk + 1) hides keys."""
    lq, lk = q.shape[2], k.shape[2]
    bq, bk = min(_BLOCK, lq), min(_BLOCK, lk)
    q_pos, k_pos = padded_arange(lq, bq, q.device), padded_arange(lk, bk, q.device)
    kv_index = torch.arange(k_pos.numel() // bk, device=q.device).expand(q_pos.numel() // bq, -1).contiguous()
    part = Part(q_pos, k_pos, kv_index, bq, bk, _all_pairs)
    pad_q, pad_k = q_pos.numel() - lq, k_pos.numel() - lk
    out, _ = block_sparse_attention(F.pad(q, (0, 0, 0, pad_q)), F.pad(k, (0, 0, 0, pad_k)),
                                    F.pad(v, (0, 0, 0, pad_k)), part, key_pad=key_pad)
    return out[:, :, :lq]


@register_attention("perceiver")
class PerceiverAttention(AttentionBase):
    """Attention routed through ``num_latents`` learned latent vectors per head (Perceiver IO).

    Per head, with the latent array ``L`` (M, D) and parameter-free dot-product attention
    ``attn(a, b, c) = softmax(a b^T / sqrt(D)) c``:

    1. encode: ``z = L + attn(L, k, v)``: the latents read the N inputs (padded keys hidden), with
       the residual of Perceiver's cross-attention block;
    2. process: ``latent_layers`` times ``z = z + attn(z, z, z)`` (latent self-attention);
    3. decode: ``out = attn(q, z, z)``: every query reads the latents (keys and values are the latents).

    Cost ``O(N M + M^2)`` per head. The learned projections, MLPs and layer norms of Perceiver IO are
    not here: the parent layer owns the projections. The latents start as a unit normal sample (the
    scale Perceiver's latents have after their layer norm) and are the module's only parameters.
    ``Nq`` may differ from ``Nk`` (cross-attention works as is).

    No causal mode: every latent reads every input, so each output would depend on future tokens;
    causal Perceivers (Perceiver AR) need per-position latents, a different design.

    Args:
        num_heads: heads H; must match the inputs' head count.
        head_dim: channels D per head; q, k and v must all have it (values become latents).
        num_latents: latents M per head.
        latent_layers: rounds of latent self-attention (0 to skip).
        causal: must be False (see above).
    """

    exact = False
    time_complexity = "O(N M + M^2)"
    memory_complexity = "O(N M + M^2)"
    summary = "latent bottleneck (Perceiver IO)"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"num_latents": window}

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        """4 D per pair of its three dense attentions: M N (encode) + layers M^2 (process) + N M (decode)."""
        if "num_latents" not in settings:
            return None
        m = settings["num_latents"]
        return 4.0 * head_dim * (2 * n * m + settings.get("latent_layers", 1) * m * m)

    def __init__(self, *, num_heads: int, head_dim: int, num_latents: int = 64, latent_layers: int = 1,
                 causal: bool = False):
        if causal is True:
            raise ValueError("causal=True is not supported by perceiver: every latent reads every input, so each "
                             "output would depend on future tokens; use a causal variant (e.g. local, lsh)")
        super().__init__(causal=causal)
        self.num_heads = check_int("num_heads", num_heads, min_value=1)
        self.head_dim = check_int("head_dim", head_dim, min_value=1)
        self.num_latents = check_int("num_latents", num_latents, min_value=1)
        self.latent_layers = check_int("latent_layers", latent_layers, min_value=0)
        self.latents = nn.Parameter(torch.empty(num_heads, num_latents, head_dim))  # (H, M, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit normal latents."""
        nn.init.normal_(self.latents)

    def _check_heads(self, q: Tensor, k: Tensor, v: Tensor) -> None:
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q, k, v have H={q.shape[1]} heads but num_heads={self.num_heads} sized the latents")
        dims = {"q": q.shape[-1], "k": k.shape[-1], "v": v.shape[-1]}
        if any(d != self.head_dim for d in dims.values()):
            got = ", ".join(f"{n} has D={d}" for n, d in dims.items())
            raise ValueError(f"head_dim={self.head_dim} sized the latents but {got}; all must equal head_dim "
                             "(values become latents, which the queries then read as keys)")

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """q, k, v: (B, H, Nq, D), (B, H, Nk, D), (B, H, Nk, D) -> (B, H, Nq, D)."""
        check_qkv(q, k, v, key_padding_mask)
        self._check_heads(q, k, v)
        q, k, v, lat = autocast_inputs(q, k, v, self.latents)
        b = q.shape[0]
        key_pad = None
        if key_padding_mask is not None:  # (B, Nk + 1): the last slot stands for padding positions
            key_pad = F.pad(key_padding_mask.to(torch.bool), (0, 1), value=True)
        with torch.autocast(q.device.type, enabled=False):
            z = lat.unsqueeze(0).expand(b, -1, -1, -1)  # (B, H, M, D)
            z = z + _attend(z, k, v, key_pad)  # encode
            for _ in range(self.latent_layers):  # process
                z = z + _attend(z, z, z)
            return _attend(q, z, z)  # decode: (B, H, Nq, D)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, num_latents={self.num_latents}, "
                f"latent_layers={self.latent_layers}")
