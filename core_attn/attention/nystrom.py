"""Nystromformer: softmax attention approximated through m landmarks (segment means of q and k).

Xiong, Zeng, Chakraborty, Tan, Fung, Li & Singh 2021, "Nystromformer: A Nystrom-Based Algorithm for
Approximating Self-Attention", AAAI 2021, arXiv:2102.03902.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_attn.attention.base import AttentionBase, autocast_inputs, check_qkv
from core_attn.registry import register_attention
from core_attn.validation import check_choice, check_int

PINV_METHODS = ("iterative", "exact")


def iterative_pinv(mat: Tensor, iterations: int = 6) -> Tensor:
    """Moore-Penrose pseudo-inverse by the Nystromformer's iteration (Xiong et al. 2021, Eq. 16).

    ``Z_{j+1} = Z_j (13 I - A Z_j (15 I - A Z_j (7 I - A Z_j))) / 4``, started at
    ``Z_0 = A^T / (||A||_1 ||A||_inf)``, which converges to ``pinv(A)``. The scale is computed per
    matrix (the paper's exact coefficient), so batch elements and heads never influence each other.

    Args:
        mat: (..., m, m) matrices (here: row-stochastic or with zero rows).
        iterations: number of iterations.

    Returns:
        (..., m, m) approximate pseudo-inverses.
    """
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
    norm_1 = mat.abs().sum(-2).amax(-1)  # (...,): max column sum
    norm_inf = mat.abs().sum(-1).amax(-1)  # (...,): max row sum
    z = mat.transpose(-1, -2) / (norm_1 * norm_inf).clamp_min(torch.finfo(mat.dtype).tiny)[..., None, None]
    for _ in range(iterations):
        az = torch.matmul(mat, z)
        z = 0.25 * torch.matmul(z, 13 * eye - torch.matmul(az, 15 * eye - torch.matmul(az, 7 * eye - az)))
    return z


def _masked_softmax(scores: Tensor, keep: Tensor) -> Tensor:
    """Softmax over the last dim where ``keep``; rows with nothing to keep are all zero (finite gradients)."""
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, -1) * keep


def segment_means(x: Tensor, valid: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    """Means of ``num_segments`` consecutive segments of the valid positions of each sequence.

    The L valid positions of a sequence (in order) are split evenly: the r-th valid position goes to
    segment ``floor(r m / L)``. When m divides N and nothing is padded these are the paper's segments
    of N / m consecutive positions; padding changes nothing but L, so a padded sequence has exactly
    the landmarks of the same sequence unpadded. With L < m some segments are empty.

    Args:
        x: (B, H, N, D).
        valid: (B, N) bool, False for padding.
        num_segments: m.

    Returns:
        ``(means, nonempty)``: (B, H, m, D) means (zero for empty segments) and (B, m) bool.
    """
    rank = valid.long().cumsum(-1) - 1  # (B, N): index among the valid positions
    length = valid.sum(-1, keepdim=True).clamp_min(1)  # (B, 1)
    seg = rank.clamp_min(0) * num_segments // length  # (B, N) in [0, m)
    ids = torch.arange(num_segments, device=x.device)
    member = (seg[:, None, :] == ids[None, :, None]) & valid[:, None, :]  # (B, m, N)
    count = member.sum(-1)  # (B, m)
    avg = member.to(x.dtype) / count.clamp_min(1)[..., None].to(x.dtype)  # (B, m, N): rows average a segment
    return torch.matmul(avg[:, None], x), count > 0  # (B, H, m, D), (B, m); O(N m) like the kernels


@register_attention("nystrom")
class NystromAttention(AttentionBase):
    """Nystromformer attention (Xiong et al. 2021): ``softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T) V``
    with landmarks Ql, Kl the means of m segments of the queries and keys (scores scaled by 1/sqrt(d)).

    Landmarks: the valid (non-padding) positions are split into m even, consecutive segments (see
    :func:`segment_means`); when m divides N this is the paper's segmentation, otherwise segments differ
    in size by at most one instead of padding N up to a multiple of m. Padding keys are left out of the
    landmark means and of ``softmax(Ql K^T)``, so a padded sequence gives, at its valid positions, the
    output of the same sequence unpadded. With m >= N every landmark is one token and the result is
    exact softmax attention (up to the pseudo-inverse). Empty segments (fewer valid tokens than m) are
    masked out of all three kernels; the pseudo-inverse is zero on them.

    Pseudo-inverse: ``"iterative"`` (the paper's method, :func:`iterative_pinv`, ``pinv_iterations``
    steps) or ``"exact"`` (``torch.linalg.pinv``, SVD-based).

    Optional depthwise convolution residual on V (the paper's code: ``Conv2d(H, H, (kernel, 1),
    groups=H)`` along the sequence, one filter per head, applied to V with padding rows zeroed);
    needs ``num_heads``.

    Not causal: the landmarks average over whole segments, future positions included.

    Mixed precision: computed in float32 (float64 for float64 inputs), output in the input dtype.

    Args:
        num_landmarks: m, the number of landmarks.
        pinv: ``"iterative"`` or ``"exact"``.
        pinv_iterations: iterations of the iterative pseudo-inverse.
        conv_kernel: odd kernel size of the depthwise convolution residual, or None for none.
        num_heads: H, needed (and checked against the input) when ``conv_kernel`` is set.
        causal: must be False.

    Complexity (N: sequence length, m: landmarks, d: head dim): time O(N m d + m^3), memory O(N m + m^2);
    no (N, N) tensor.
    """

    exact = False
    time_complexity = "O(N m d + m^3)"
    memory_complexity = "O(N m + m^2)"
    summary = "Nyström landmarks (Nyströmformer)"

    @classmethod
    def bench_settings(cls, window: int) -> dict:
        return {"num_landmarks": 64}  # the paper's 64, whatever the window

    @classmethod
    def flops_per_head(cls, n: int, head_dim: int, settings: dict) -> float | None:
        """8 N m D + 2 N m^2 + 2 m^2 D + 48 m^3 (Xiong et al. 2021 with 6 pseudo-inverse iterations)."""
        if "num_landmarks" not in settings:
            return None
        m = settings["num_landmarks"]
        return 8.0 * n * m * head_dim + 2.0 * n * m * m + 2.0 * m * m * head_dim + 48.0 * m ** 3

    def __init__(self, *, num_landmarks: int = 64, pinv: str = "iterative", pinv_iterations: int = 6,
                 conv_kernel: int | None = None, num_heads: int | None = None, causal: bool = False):
        super().__init__(causal=causal)
        if causal:
            raise ValueError(
                "causal=True is not supported by nystrom: each landmark is the mean of a segment of queries or "
                "keys, future positions included, so no causal mask can be applied; use causal=False, or a "
                "causal variant such as 'linear'"
            )
        self.num_landmarks = check_int("num_landmarks", num_landmarks, min_value=1)
        self.pinv = check_choice("pinv", pinv, PINV_METHODS)
        self.pinv_iterations = check_int("pinv_iterations", pinv_iterations, min_value=1)
        self.conv_kernel = None if conv_kernel is None else check_int("conv_kernel", conv_kernel, min_value=1)
        self.num_heads = None if num_heads is None else check_int("num_heads", num_heads, min_value=1)
        self.conv = None
        if self.conv_kernel is not None:
            if self.conv_kernel % 2 == 0:
                raise ValueError(f"conv_kernel={conv_kernel} must be odd (the residual keeps the sequence length)")
            if self.num_heads is None:
                raise ValueError(f"conv_kernel={conv_kernel} needs num_heads (one depthwise filter per head); "
                                 "got num_heads=None")
            self.conv = nn.Conv2d(self.num_heads, self.num_heads, (self.conv_kernel, 1),
                                  padding=(self.conv_kernel // 2, 0), groups=self.num_heads, bias=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        check_qkv(q, k, v, key_padding_mask, self_attention=True)
        if self.conv is not None and q.shape[1] != self.num_heads:
            raise ValueError(f"the input has H={q.shape[1]} heads but num_heads={self.num_heads} "
                             "(the depthwise convolution has one filter per head)")
        q, k, v = autocast_inputs(q, k, v)
        out_dtype = q.dtype
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        with torch.autocast(q.device.type, enabled=False):
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            b, _, n, d = q.shape
            if key_padding_mask is None:
                valid = torch.ones(b, n, dtype=torch.bool, device=q.device)
            else:
                valid = ~key_padding_mask.to(torch.bool)  # (B, N)
            scale = 1.0 / math.sqrt(d)
            q_land, nonempty = segment_means(q, valid, self.num_landmarks)  # (B, H, m, D), (B, m)
            k_land, _ = segment_means(k, valid, self.num_landmarks)  # same segments, same emptiness
            land = nonempty[:, None, None, :]  # (B, 1, 1, m)
            land_rows = nonempty[:, None, :, None].to(dtype)  # (B, 1, m, 1)
            kernel_1 = _masked_softmax(torch.matmul(q, k_land.transpose(-1, -2)) * scale, land)  # (B, H, N, m)
            kernel_2 = _masked_softmax(torch.matmul(q_land, k_land.transpose(-1, -2)) * scale, land) * land_rows
            kernel_3 = _masked_softmax(torch.matmul(q_land, k.transpose(-1, -2)) * scale,
                                       valid[:, None, None, :]) * land_rows  # (B, H, m, N)
            if self.pinv == "exact":
                inv = torch.linalg.pinv(kernel_2)  # (B, H, m, m)
            else:
                inv = iterative_pinv(kernel_2, self.pinv_iterations)
            out = torch.matmul(kernel_1, torch.matmul(inv, torch.matmul(kernel_3, v)))  # (B, H, N, Dv)
            if self.conv is not None:
                v_valid = v * valid[:, None, :, None]
                out = out + F.conv2d(v_valid, self.conv.weight.to(dtype), padding=(self.conv_kernel // 2, 0),
                                     groups=self.num_heads)
        return out.to(out_dtype)

    def extra_repr(self) -> str:
        return (f"num_landmarks={self.num_landmarks}, pinv={self.pinv!r}, pinv_iterations={self.pinv_iterations}, "
                f"conv_kernel={self.conv_kernel}, num_heads={self.num_heads}")
