"""Kernelised (linear) attention: ``elu + 1`` features or Performer's FAVOR+ positive random features.

Katharopoulos, Vyas, Pappas & Fleuret 2020, "Transformers are RNNs: Fast Autoregressive Transformers
with Linear Attention", arXiv:2006.16236 (the ``elu`` feature map and the causal prefix-sum form).
Choromanski et al. 2021, "Rethinking Attention with Performers", arXiv:2009.14794 (``favor``: positive
orthogonal random features, an unbiased estimate of the softmax kernel ``exp(q.k / sqrt(d))``).

Attention with a feature map ``phi`` is ``out_i = sum_j (phi(q_i).phi(k_j)) v_j / sum_j phi(q_i).phi(k_j)``;
computing ``phi(K)^T V`` first makes it linear in N. The causal form runs over chunks of C positions:
inside a chunk the (C, C) weights are materialised with a causal mask, across chunks a carried state
(the sum of ``phi(k_j) [v_j, 1]^T`` over earlier chunks, (m, Dv + 1) per chunk) is added.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from core_attn.attention.base import AttentionBase, autocast_inputs, check_qkv
from core_attn.registry import register_attention
from core_attn.validation import check_choice, check_float, check_int

FEATURE_MAPS = ("elu", "favor")


def orthogonal_random_features(num_features: int, dim: int, generator: torch.Generator) -> Tensor:
    """Performer's Gaussian orthogonal random matrix (Choromanski et al. 2021, section 2.4).

    Rows come in blocks of ``dim`` exactly orthogonal directions (Haar-distributed: QR of a Gaussian
    matrix with the signs of R's diagonal folded into Q), each row rescaled by the norm of an
    independent ``dim``-dimensional Gaussian vector, so that every row is marginally N(0, I).

    Args:
        num_features: m, the number of rows.
        dim: d, the head dimension.
        generator: the source of randomness (CPU generator).

    Returns:
        (m, d) float32 matrix on the CPU.
    """
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r))[None, :]  # Haar-uniform Q (Mezzadri 2007)
        blocks.append(q.T)  # rows orthonormal
    w = torch.cat(blocks)[:num_features]  # (m, d)
    norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)  # (m,)
    return (w * norms[:, None]).float()


def _favor_logits(x: Tensor, w: Tensor) -> Tensor:
    """log of the unnormalised FAVOR+ features: ``w.x' - |x'|^2 / 2`` with ``x' = x d^-1/4``.

    (B, H, N, D), (m, D) -> (B, H, N, m). With ``x' = x d^-1/4`` for both q and k, ``q'.k' = q.k / sqrt(d)``:
    the softmax temperature of standard attention.
    """
    x = x * x.shape[-1] ** -0.25
    return torch.matmul(x, w.T) - 0.5 * (x * x).sum(-1, keepdim=True)


@register_attention("linear")
class LinearAttention(AttentionBase):
    """Linear attention (Katharopoulos et al. 2020) with ``elu + 1`` or FAVOR+ (Choromanski et al. 2021)
    features; O(N) in time and memory, causal or not.

    Feature maps:
        ``elu``: ``phi(x) = elu(x) + 1`` (m = D features). Not an approximation of softmax: a different
        attention kernel, as in the paper.
        ``favor``: ``phi(x)_r = exp(w_r.x' - |x'|^2 / 2) / sqrt(m)``, ``x' = x d^-1/4``, with m
        positive orthogonal random features ``w_r``; ``E[phi(q).phi(k)] = exp(q.k / sqrt(d))``, so the
        output approximates softmax attention and the error falls as m grows.

    Numerical stabiliser (``favor``): each query's features are divided by their own largest value, and
    keys by a common constant: the largest key logit over all valid keys (non-causal), or, when causal,
    the running maximum up to each key, with the carried state rescaled as the maximum grows (as in
    online softmax). Every constant a query sees is shared by all the keys it sees, so it cancels
    between numerator and denominator; it is computed without gradient. The causal stabiliser depends
    only on past keys, so not even rounding depends on the future.

    The random features are drawn once, from a ``torch.Generator`` seeded with ``seed``, when the head
    dimension is first seen (the first forward), and kept in the ``projection`` buffer (saved with the
    state dict): identical in training and evaluation and across calls. :meth:`redraw` draws new ones.

    Mixed precision: features, sums and normalisers are computed in float32 (float64 for float64
    inputs); the output has the (autocast) input dtype.

    Args:
        feature_map: ``"elu"`` or ``"favor"``.
        num_features: m, the number of random features (``favor`` only; ``elu`` uses m = D).
        seed: seed of the random features (``favor`` only).
        causal: query i sees keys j <= i (self-attention only).
        chunk_size: C, positions per chunk of the causal form.
        eps: lower bound on the normaliser ``phi(q_i) . sum_j phi(k_j)``: guards queries that see no key
            (numerator and normaliser are then exactly 0, and so is the output). It clamps rather than
            adds, so it leaves every normaliser above it untouched: with FAVOR+ the stabilised
            normaliser can legitimately be as small as 1e-10 for large-norm inputs.

    Complexity (N: sequence length, m: features, d: head dim, C: chunk size): time O(N m d) (causal adds
    O(N C m)); memory O(N m) for the features, and when causal O(N C) for the in-chunk weights plus
    O((N / C) m d) for the per-chunk carried states (never an (N, m, d) prefix sum, never (N, N)).
    """

    exact = False
    time_complexity = "O(N m d)"
    memory_complexity = "O(N m)"
    summary = "kernelised: elu+1, Performer FAVOR+"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"feature_map": "elu"}  # m = head dim features

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        """Non-causal form: phi(K)^T V and phi(Q) (KV), 4 N m D, plus 4 N m for the normaliser, with m = D
        (elu) or the feature count (favor, plus 4 N D m for the features)."""
        favor = settings.get("feature_map", "elu") == "favor"
        m = settings.get("num_features", 256) if favor else head_dim
        return 4.0 * n * m * head_dim + 4.0 * n * m + (4.0 * n * head_dim * m if favor else 0.0)

    def __init__(self, *, feature_map: str = "elu", num_features: int = 256, seed: int = 0, causal: bool = False,
                 chunk_size: int = 64, eps: float = 1e-12):
        super().__init__(causal=causal)
        self.feature_map = check_choice("feature_map", feature_map, FEATURE_MAPS)
        self.num_features = check_int("num_features", num_features, min_value=1)
        self.seed = check_int("seed", seed, min_value=0)
        self.chunk_size = check_int("chunk_size", chunk_size, min_value=1)
        self.eps = check_float("eps", eps, min_value=0.0)
        if self.eps == 0.0:
            raise ValueError("eps=0.0 must be > 0: it keeps a query that sees no key at 0 / eps = 0, not 0 / 0")
        self._draws = 0  # how many draws of the seeded stream the current features are
        # (m, D) once the head dimension is known; empty until then (see _load_from_state_dict).
        self.register_buffer("projection", torch.empty(0, 0) if feature_map == "favor" else None)

    # -- random features ---------------------------------------------------------------------------
    def _draw(self, dim: int) -> Tensor:
        # A normal tensor even when the first call runs under inference_mode (e.g. Lightning's sanity
        # check): an inference tensor in the buffer could not be saved for backward later.
        with torch.inference_mode(False), torch.no_grad():
            gen = torch.Generator().manual_seed(self.seed)
            for _ in range(self._draws):  # the k-th draw of the stream seeded with `seed`
                orthogonal_random_features(self.num_features, dim, gen)
            return orthogonal_random_features(self.num_features, dim, gen)

    def redraw(self) -> None:
        """Draw new random features (the next draw of the seeded stream); a no-op for ``elu``."""
        if self.projection is None:
            return
        self._draws += 1
        if self.projection.numel():
            self.projection = self._draw(self.projection.shape[1]).to(self.projection)

    def _features_for(self, dim: int, device: torch.device) -> Tensor:
        if self.projection.numel() == 0:
            with torch.inference_mode(False):
                self.projection = self._draw(dim).to(device)
        elif self.projection.shape[1] != dim:
            raise ValueError(
                f"the favor random features were drawn for head dim D={self.projection.shape[1]}; got D={dim}. "
                "Use one LinearAttention per head dimension"
            )
        return self.projection

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "projection"
        if self.projection is not None and key in state_dict:  # adopt the checkpoint's (m, D) shape
            self.projection = torch.empty_like(state_dict[key], device=self.projection.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- feature maps ------------------------------------------------------------------------------
    def query_features(self, q: Tensor) -> Tensor:
        """(B, H, N, D) -> (B, H, N, m) query features, each row scaled by a constant of its own."""
        if self.feature_map == "elu":
            return F.elu(q) + 1
        w = self._features_for(q.shape[-1], q.device).to(q.dtype)
        a = _favor_logits(q, w)  # (B, H, N, m)
        return torch.exp(a - a.amax(-1, keepdim=True).detach()) * self.num_features ** -0.5

    def key_features(self, k: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Key features and the log of the stabiliser they were divided by.

        Args:
            k: (B, H, N, D).
            valid: (B, N) bool, False for padding keys (their features are zero), or None.

        Returns:
            ``(phi, s)``: phi (B, H, N, m); s is None for ``elu`` (no stabiliser), else (B, H, N) with
            ``phi_j = exp(logit_j - s_j) / sqrt(m)``: s is the same for every key when non-causal, and
            the running maximum (non-decreasing in j) when causal.
        """
        if self.feature_map == "elu":
            phi = F.elu(k) + 1
            return (phi if valid is None else phi * valid[:, None, :, None]), None
        w = self._features_for(k.shape[-1], k.device).to(k.dtype)
        a = _favor_logits(k, w)  # (B, H, N, m)
        if valid is not None:
            a = a.masked_fill(~valid[:, None, :, None], float("-inf"))
        with torch.no_grad():
            top = a.amax(-1)  # (B, H, N)
            s = top.cummax(-1).values if self.causal else top.amax(-1, keepdim=True).expand_as(top)
            # no valid key (yet): any finite value works, the features there are exp(-inf) = 0
            s = s.clamp(min=torch.finfo(s.dtype).min)
        return torch.exp(a - s[..., None]) * self.num_features ** -0.5, s

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        check_qkv(q, k, v, key_padding_mask, self_attention=self.causal)
        q, k, v = autocast_inputs(q, k, v)
        out_dtype = q.dtype
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        with torch.autocast(q.device.type, enabled=False):
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            valid = None if key_padding_mask is None else ~key_padding_mask.to(torch.bool)  # (B, N)
            phi_q = self.query_features(q)  # (B, H, Nq, m)
            phi_k, s = self.key_features(k, valid)  # (B, H, Nk, m), (B, H, Nk) | None
            v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1)  # (B, H, Nk, Dv + 1): last column -> normaliser
            if self.causal:
                num = _causal_linear(phi_q, phi_k, v1, s, self.chunk_size)
            else:
                num = torch.matmul(phi_q, torch.matmul(phi_k.transpose(-1, -2), v1))  # (B, H, Nq, Dv + 1)
            out = num[..., :-1] / num[..., -1:].clamp_min(self.eps)
        return out.to(out_dtype)

    def extra_repr(self) -> str:
        fm = f"feature_map={self.feature_map!r}"
        if self.feature_map == "favor":
            fm += f", num_features={self.num_features}, seed={self.seed}"
        return f"{fm}, causal={self.causal}, chunk_size={self.chunk_size}, eps={self.eps}"


def _causal_linear(phi_q: Tensor, phi_k: Tensor, v1: Tensor, s: Tensor | None, chunk: int) -> Tensor:
    """``sum_{j <= i} (phi_q_i . phi_k_j) exp(s_j - s_i) v1_j`` for every i, chunk by chunk.

    Args:
        phi_q, phi_k: (B, H, N, m) features; phi_k_j was divided by exp(s_j).
        v1: (B, H, N, Dv') values (with the ones column).
        s: (B, H, N) non-decreasing log-stabilisers of the keys, or None (= 0).
        chunk: C.

    Returns:
        (B, H, N, Dv'): every key weight is scaled by the query's own exp(-s_i), so that constant
        cancels in the caller's normalisation.
    """
    b, h, n, m = phi_q.shape
    c = min(chunk, n)
    nc = math.ceil(n / c)
    pad = nc * c - n
    if pad:  # zero features at the tail: padded keys add nothing, padded queries are dropped below
        phi_q, phi_k, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v1))
        if s is not None:
            s = F.pad(s, (0, pad), mode="replicate")
    qc, kc, vc = (t.reshape(b, h, nc, c, t.shape[-1]) for t in (phi_q, phi_k, v1))  # (B, H, nc, C, .)
    keep = torch.ones(c, c, dtype=torch.bool, device=phi_q.device).tril()  # (C, C): j <= i
    w = torch.matmul(qc, kc.transpose(-1, -2))  # (B, H, nc, C, C)
    if s is None:
        w = w.masked_fill(~keep, 0.0)
        state = torch.matmul(kc.transpose(-1, -2), vc)  # (B, H, nc, m, Dv'): per-chunk sums
        carried = torch.cat([torch.zeros_like(state[:, :, :1]), state[:, :, :-1]], 2).cumsum(2)  # exclusive
        out = torch.matmul(w, vc) + torch.matmul(qc, carried)
    else:
        sc = s.reshape(b, h, nc, c)  # (B, H, nc, C)
        diff = (sc[..., None, :] - sc[..., :, None]).masked_fill(~keep, float("-inf"))  # s_j - s_i, j <= i
        w = w * torch.exp(diff)
        end = sc[..., -1]  # (B, H, nc): the stabiliser at each chunk's end
        kc_end = kc * torch.exp(sc - end[..., None])[..., None]  # keys rescaled to their chunk's end
        state = torch.matmul(kc_end.transpose(-1, -2), vc)  # (B, H, nc, m, Dv')
        carried = _rescaled_exclusive_scan(state, end)  # (B, H, nc, m, Dv') scaled to the previous end
        prev_end = torch.cat([torch.full_like(end[..., :1], torch.finfo(end.dtype).min), end[..., :-1]], -1)
        out = torch.matmul(w, vc) + torch.matmul(qc, carried) * torch.exp(prev_end[..., None] - sc)[..., None]
    return out.reshape(b, h, nc * c, -1)[:, :, :n]


def _rescaled_exclusive_scan(state: Tensor, end: Tensor) -> Tensor:
    """Exclusive prefix sum of per-chunk states that carry different stabilisers.

    ``state[:, :, c]`` is scaled by exp(-end[c]) with ``end`` non-decreasing; returns, for every chunk c,
    ``sum_{j < c} state_j exp(end_j - end_{c-1})``. A plain cumsum would need one common scale for all
    chunks, which the future sets; the running rescale keeps every factor <= 1 and causal. The loop
    runs over N / C chunks on (B, H, m, Dv') tensors.
    """
    carried = [torch.zeros_like(state[:, :, 0])]
    for c in range(1, state.shape[2]):
        decay = torch.exp(end[:, :, c - 2] - end[:, :, c - 1]) if c >= 2 else None
        acc = carried[-1] if decay is None else carried[-1] * decay[..., None, None]
        carried.append(acc + state[:, :, c - 1])
    return torch.stack(carried, 2)
