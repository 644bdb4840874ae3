"""The peers ``python -m core_attn.bench`` measures our layers against, built as layers of the same size.

Each peer is wrapped so that it maps ``x`` (B, N, C) to (B, N, C) with q/k/v and output projections,
like :class:`core_attn.layers.MultiheadAttention`, so the timings compare whole layers:

* ``hf_longformer``: HF transformers' ``LongformerSelfAttention`` (Beltagy et al. 2020) with
  ``attention_window = 2 * window`` (``window`` keys on each side, no global tokens), plus an output
  ``nn.Linear`` (HF's ``LongformerSelfOutput`` adds a LayerNorm and residual we leave out). It needs N to
  be a multiple of ``2 * window``: shorter multiples are padded with zeros at the end (the padded keys
  are masked as ``LongformerModel`` does) and the row reports ``n_run``.
* ``hf_bigbird``: HF transformers' ``BigBirdBlockSparseAttention`` (Zaheer et al. 2020; 64-token
  blocks, 3 window + 2 global + 3 random blocks, which is fixed in HF's ITC implementation) plus an output
  ``nn.Linear``. Kept in training mode: in eval mode HF draws no random blocks (all indices 0). N must be
  a multiple of 64. Under bf16 autocast the masks are passed in bf16 (HF's fp32 masks fail there).
* ``local_attention_pkg``: lucidrains' ``local-attention`` package, ``LocalAttention(window_size=window,
  look_backward=1, look_forward=1, exact_windowsize=True, autopad=True)`` with our fused qkv and output
  projections. ``exact_windowsize=True`` masks the three visited windows down to ``|i - j| <= window``,
  the same pairs as our ``local``; no ``dim``, so no rotary embedding (our layer has none either). When
  N is not a multiple of ``window`` an all-true ``mask`` is passed: ``autopad`` alone leaves the zero
  padding keys visible to the last queries.
* ``flex_local``: ``torch.compile(flex_attention)`` with a sliding-window ``BlockMask`` made by
  ``create_block_mask`` (which evaluates the mask on the full N x N grid, as users call it); forward only
  on CPU (torch 2.9 has no FlexAttention backward there), forward and backward with ``--device cuda``. The
  first call (compile) is reported separately.

Imports of transformers / local_attention happen inside the builders, so this module imports with torch
only.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PeerSpec:
    """A peer layer: which of our variants has the same pattern budget, and what it can run."""

    ref: str  # our variant with the same pattern (it lends the peer its useful FLOPs)
    modes: tuple[str, ...]  # "fwd" and/or "fwdbwd"
    backend: str  # what runs inside, for the table
    package: str | None  # the import that must be installed
    config: str  # one line for the report


PEERS: dict[str, PeerSpec] = {
    "hf_longformer": PeerSpec("local", ("fwd", "fwdbwd"), "transformers eager", "transformers",
                              "LongformerSelfAttention(attention_window=2*window) + out Linear"),
    "hf_bigbird": PeerSpec("bigbird", ("fwd", "fwdbwd"), "transformers eager", "transformers",
                           "BigBirdBlockSparseAttention(block_size=64, num_random_blocks=3) + out Linear, train mode"),
    "local_attention_pkg": PeerSpec("local", ("fwd", "fwdbwd"), "local-attention einsum", "local_attention",
                                    "LocalAttention(window_size=window, look_backward=1, look_forward=1, "
                                    "exact_windowsize=True, autopad=True) + qkv/out Linear"),
    "flex_local": PeerSpec("local", ("fwd",), "compiled FlexAttention", "torch.nn.attention.flex_attention",
                           "torch.compile(flex_attention), create_block_mask(|i-j|<=window) + qkv/out Linear"),
}


def peer_installed(name: str) -> bool:
    """Whether the package the peer needs can be imported (checked without importing it)."""
    pkg = PEERS[name].package
    try:
        return pkg is None or importlib.util.find_spec(pkg) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def run_length(name: str, n: int, window: int) -> int:
    """The length the peer actually runs for an input of ``n`` tokens (after its padding)."""
    if name == "hf_longformer":
        return math.ceil(n / (2 * window)) * 2 * window
    if name == "hf_bigbird":
        return math.ceil(n / 64) * 64
    return n


class _QKVLayer(nn.Module):
    """Fused qkv and output projections around ``attend(q, k, v)`` on (B, H, N, hd) tensors."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        out = self.attend(*qkv.unbind(0))  # (B, H, N, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LocalAttentionPkgLayer(_QKVLayer):
    """lucidrains' ``local_attention.LocalAttention`` with the exact ``|i - j| <= window`` band."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__(dim, num_heads)
        from local_attention import LocalAttention

        self.inner = LocalAttention(window_size=window, look_backward=1, look_forward=1, exact_windowsize=True,
                                    autopad=True)

    def attend(self, q, k, v):
        b, _, n, _ = q.shape
        if n % self.inner.window_size == 0:
            return self.inner(q, k, v)
        # autopad pads with zero keys that stay visible unless a mask says otherwise
        return self.inner(q, k, v, mask=torch.ones(b, n, dtype=torch.bool, device=q.device))


class FlexLocalLayer(_QKVLayer):
    """Compiled FlexAttention with a sliding-window ``BlockMask`` (built on first use per length)."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__(dim, num_heads)
        self.window = window
        self._masks: dict = {}
        self._flex = None

    def attend(self, q, k, v):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        n = q.shape[2]
        if n not in self._masks:
            w = self.window

            def band(b, h, q_idx, kv_idx):
                return (q_idx - kv_idx).abs() <= w

            self._masks[n] = create_block_mask(band, None, None, n, n, device=q.device)
        if self._flex is None:
            self._flex = torch.compile(flex_attention, dynamic=False)
        return self._flex(q, k, v, block_mask=self._masks[n])


class LongformerLayer(nn.Module):
    """HF ``LongformerSelfAttention`` (local attention only) plus an output projection; pads N to a
    multiple of ``2 * window`` and masks the padding like ``LongformerModel``."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

        cfg = LongformerConfig(hidden_size=dim, num_attention_heads=num_heads, attention_window=[2 * window],
                               attention_probs_dropout_prob=0.0, num_hidden_layers=1)
        self.attn = LongformerSelfAttention(cfg, layer_id=0)
        self.proj = nn.Linear(dim, dim)
        self.multiple = 2 * window

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        pad = (-n) % self.multiple
        xp = nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
        # HF's encoding of the extended mask: 0 = local attention, < 0 = padding, > 0 = global
        mask = torch.zeros(b, n + pad, dtype=xp.dtype, device=x.device)
        if pad:
            mask[:, n:] = -10000.0
        is_masked = mask < 0
        out = self.attn(xp, attention_mask=mask, is_index_masked=is_masked,
                        is_index_global_attn=torch.zeros_like(is_masked), is_global_attn=False)[0]
        return self.proj(out[:, :n])


class BigBirdLayer(nn.Module):
    """HF ``BigBirdBlockSparseAttention`` plus an output projection; N must be a multiple of 64."""

    def __init__(self, dim: int, num_heads: int, n: int):
        super().__init__()
        from transformers import BigBirdConfig, BigBirdModel
        from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

        if n % 64:
            raise ValueError(f"hf_bigbird needs N a multiple of its block size 64; got N={n}")
        cfg = BigBirdConfig(hidden_size=dim, num_attention_heads=num_heads, block_size=64, num_random_blocks=3,
                            attention_type="block_sparse", attention_probs_dropout_prob=0.0,
                            max_position_embeddings=max(n, 4096), num_hidden_layers=1)
        self.attn = BigBirdBlockSparseAttention(cfg, seed=0)
        self.proj = nn.Linear(dim, dim)
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(torch.ones(1, n), 64)
        for name, t in (("blocked", blocked), ("band", band), ("from_mask", from_mask), ("to_mask", to_mask)):
            self.register_buffer(name, t, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # HF passes the masks in the hidden states' dtype, which fails under CPU autocast (scatter_ of bf16
        # scores into an fp32 view); in the autocast dtype it runs.
        kind = x.device.type
        dt = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        masks = [m.to(dt) for m in (self.band, self.from_mask, self.to_mask, self.blocked, self.blocked)]
        out = self.attn(x, *masks)[0]  # transformers 4.x returns (out,), 5.x (out, probs)
        return self.proj(out)


def build_peer(name: str, n: int, dim: int, num_heads: int, window: int) -> nn.Module:
    """The peer layer ``name`` for inputs of ``n`` tokens (width ``dim``, ``num_heads`` heads)."""
    if name == "hf_longformer":
        return LongformerLayer(dim, num_heads, window)
    if name == "hf_bigbird":
        return BigBirdLayer(dim, num_heads, n)
    if name == "local_attention_pkg":
        return LocalAttentionPkgLayer(dim, num_heads, window)
    if name == "flex_local":
        return FlexLocalLayer(dim, num_heads, window)
    raise ValueError(f"unknown peer {name!r}; expected one of {sorted(PEERS)}")
