"""Transformer layers that take any attention variant: multi-head attention, pre-norm blocks, encoders.

The layers own the projections and positions; the variant only maps (B, H, N, D) q, k, v to the output
(torchtune's builder habit), so ``TransformerEncoder(..., attention=build_attention("local", window=64))``
swaps the attention without touching anything else. Naming follows timm's ``Attention``/``Block``
(``qkv``, ``proj``, ``norm1``, ``mlp.fc1``...) so checkpoints and habits carry over.

References: Vaswani et al. 2017, "Attention Is All You Need" (arXiv:1706.03762); Su et al. 2021,
"RoFormer: Enhanced Transformer with Rotary Position Embedding" (arXiv:2104.09864); Huang et al. 2016,
"Deep Networks with Stochastic Depth" (arXiv:1603.09382); Touvron et al. 2021, "Going deeper with
Image Transformers" (CaiT, LayerScale, arXiv:2103.17239).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _m
from torch.utils.checkpoint import checkpoint

from core_attn.attention.base import AttentionBase, PatternAttention
from core_attn.kernels import linear
from core_attn.registry import build_attention
from core_attn.validation import check_choice, check_float, check_int

AttentionSpec = Union[AttentionBase, Callable[[], AttentionBase], None]
POSITIONS = ("none", "learned", "rotary")


def _check_dim_heads(dim: int, num_heads: int) -> int:
    """Return the head dimension; ``ValueError`` naming both when ``dim`` does not split evenly."""
    check_int("dim", dim, min_value=1)
    check_int("num_heads", num_heads, min_value=1)
    if dim % num_heads != 0:
        raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; choose dim a multiple of num_heads")
    return dim // num_heads


def _check_attention(attention: object, where: str) -> AttentionBase:
    if not isinstance(attention, AttentionBase):
        raise ValueError(f"{where} must be an AttentionBase (e.g. build_attention('local', window=64)); "
                         f"got {type(attention).__name__}")
    return attention


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021, arXiv:2104.09864) for one head dimension.

    Channel ``m`` and ``m + D/2`` form a pair rotated by the angle ``pos * base^(-2m/D)`` (the
    "rotate-half" layout of GPT-NeoX; the paper's interleaved pairs differ only by a fixed permutation
    of channels, which the learned projections absorb). The score between a rotated query at ``i`` and
    a rotated key at ``j`` then depends on positions only through ``i - j``.

    Args:
        head_dim: channels per head; must be even.
        base: the wavelength base (10000 in the paper).

    cos/sin tables from position 0 are cached per (head_dim, base, length, device, dtype, inference mode) and
    shared by every layer with the same settings (an exported graph then stores them once, not once per
    layer): inference-mode tensors cannot be saved for backward, so a table built during validation is never
    reused in training.
    ``position_offset`` (0 unless :func:`core_attn.streaming.position_offset` sets it) is the absolute
    position of the first row, so a slice of a longer sequence is rotated exactly as in one pass.
    """

    _MAX_CACHE = 16
    _cache: dict[tuple, tuple[Tensor, Tensor]] = {}  # shared by all instances (see above)

    def __init__(self, head_dim: int, *, base: float = 10000.0):
        super().__init__()
        check_int("head_dim", head_dim, min_value=2)
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension; got head_dim={head_dim}")
        self.head_dim = head_dim
        self.base = check_float("rotary_base", base, min_value=1.0)
        self.position_offset = 0

    def cos_sin(self, n: int, device, dtype: torch.dtype, offset: int = 0) -> tuple[Tensor, Tensor]:
        """The (n, head_dim) cos and sin tables for positions ``offset .. offset+n-1``."""
        if offset:  # a slice of a stream: used once, so not cached (the cache would hold stale slices)
            return self._table(n, device, dtype, offset)
        key = (self.head_dim, self.base, n, str(device), dtype, torch.is_inference_mode_enabled())
        if key not in self._cache:
            if len(self._cache) >= self._MAX_CACHE:  # lengths vary (padding buckets): keep the table small
                self._cache.clear()
            self._cache[key] = self._table(n, device, dtype, offset)
        return self._cache[key]

    def _table(self, n: int, device, dtype: torch.dtype, offset: int) -> tuple[Tensor, Tensor]:
        # fp64 angles: pos * freq loses digits in fp32 for long sequences
        inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=device) / self.head_dim)
        pos = torch.arange(offset, offset + n, dtype=torch.float64, device=device)
        angles = pos[:, None] * inv_freq[None, :]  # (n, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (n, D)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Rotate ``x`` of shape (B, H, N, D) by its positions along N; math in fp32, result in x's dtype."""
        n = x.shape[-2]
        cos, sin = self.cos_sin(n, x.device, torch.float32, self.position_offset)  # (N, D)
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)  # "rotate half": (x1, x2) -> (-x2, x1)
        return (xf * cos + rotated * sin).to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


def _project(linear_module: nn.Module, x: Tensor) -> Tensor:
    """``linear_module(x)``; a plain ``nn.Linear`` without hooks runs :func:`core_attn.kernels.linear` (its
    large CPU outputs and input gradients reuse workspace buffers). Anything else (a quantised or wrapped
    layer, a module with hooks) is called as itself."""
    if (type(linear_module) is not nn.Linear or linear_module._forward_hooks or linear_module._forward_pre_hooks
            or linear_module._backward_hooks or linear_module._backward_pre_hooks or _m._global_forward_hooks
            or _m._global_forward_pre_hooks or _m._global_backward_hooks or _m._global_backward_pre_hooks):
        return linear_module(x)
    return linear(x, linear_module.weight, linear_module.bias)


class MultiheadAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017) around any attention variant.

    Owns the fused ``qkv`` projection and the output ``proj`` (timm naming); the variant computes
    ``(B, H, N, hd) -> (B, H, N, hd)``.

    Args:
        dim: model width C; must be divisible by ``num_heads``.
        num_heads: number of heads H.
        attention: the variant; ``None`` builds ``build_attention("dense")``.
        qkv_bias: bias on the qkv projection.
        proj_bias: bias on the output projection.
        rotary: apply rotary position embedding (Su et al. 2021) to q and k.
        rotary_base: RoPE wavelength base.
        dropout: dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int, *, attention: AttentionBase | None = None, qkv_bias: bool = True,
                 proj_bias: bool = True, rotary: bool = False, rotary_base: float = 10000.0, dropout: float = 0.0):
        super().__init__()
        self.head_dim = _check_dim_heads(dim, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.attention = build_attention("dense") if attention is None else _check_attention(attention, "attention")
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(check_float("dropout", dropout, min_value=0.0, max_value=1.0))
        self.rotary = RotaryEmbedding(self.head_dim, base=rotary_base) if rotary else None

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Attend over ``x`` (B, N, C); ``key_padding_mask`` (B, N) bool, True = padding key to ignore."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, N, C={self.dim}); got {tuple(x.shape)}")
        b, n, c = x.shape
        qkv = _project(self.qkv, x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        if self.rotary is None and isinstance(self.attention, PatternAttention):  # one gradient for qkv
            out = self.attention(q, k, v, key_padding_mask=key_padding_mask, packed=qkv)  # (B, H, N, hd)
        else:
            out = self.attention(q, k, v, key_padding_mask=key_padding_mask)
        out = out.transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return self.proj_drop(_project(self.proj, out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample while training.

    Args:
        p: drop probability in [0, 1).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = check_float("drop_path", p, min_value=0.0, max_value=1.0)
        if self.p == 1.0:
            raise ValueError("drop_path=1.0 is out of range; expected 0 <= drop_path < 1")

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """Per-channel learnable residual scale (CaiT, Touvron et al. 2021), initialised to ``init``."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), check_float("layer_scale", init, min_value=0.0)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """The transformer feed-forward: ``fc1 -> GELU -> dropout -> fc2 -> dropout``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``.

    Args:
        dim: model width C.
        num_heads: attention heads.
        attention: the variant (``None``: dense).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: dropout after the attention projection and inside the MLP.
        drop_path: stochastic depth probability of each residual branch (Huang et al. 2016).
        rotary: rotary position embedding on q and k (Su et al. 2021).
        norm_eps: LayerNorm epsilon.
        layer_scale: initial LayerScale value (Touvron et al. 2021), ``None`` for none.
    """

    def __init__(self, dim: int, num_heads: int, *, attention: AttentionBase | None = None, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, drop_path: float = 0.0, rotary: bool = False, norm_eps: float = 1e-6,
                 layer_scale: float | None = None):
        super().__init__()
        check_float("mlp_ratio", mlp_ratio, min_value=1e-9)
        check_float("dropout", dropout, min_value=0.0, max_value=1.0)
        self.norm1 = nn.LayerNorm(dim, eps=check_float("norm_eps", norm_eps, min_value=0.0))
        self.attn = MultiheadAttention(dim, num_heads, attention=attention, rotary=rotary, dropout=dropout)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, max(1, round(dim * mlp_ratio)), dropout)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """(B, N, C) -> (B, N, C); ``key_padding_mask`` (B, N) bool, True = padding."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), key_padding_mask=key_padding_mask)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def _fill_context(factory: Callable, context: dict) -> dict:
    """The entries of ``context`` (num_heads, head_dim, max_seq_len) that ``factory`` accepts and has not
    bound yet: variants with parameters (perceiver, linformer) are sized by the layer they sit in."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return {}
    bound = getattr(factory, "keywords", None) or {}
    return {k: v for k, v in context.items()
            if v is not None and k in params and k not in bound and params[k].default is inspect.Parameter.empty}


def _check_options(factory: Callable) -> None:
    """A partial of a variant class with an option the class does not take (a user's config that sets
    ``attention.window`` for local, kept when the command line switches to ``attention=bigbird``) fails
    here with the option's name, the variant's options and how to drop it."""
    cls = getattr(factory, "func", None)
    if not (inspect.isclass(cls) and issubclass(cls, AttentionBase)):
        return
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(getattr(factory, "keywords", None) or {}) - set(params))
    if unknown:
        name = getattr(cls, "name", cls.__name__)
        raise ValueError(f"attention {name!r} has no option {', '.join(map(repr, unknown))} (its options: "
                         f"{', '.join(params)}); set by a config for another variant? Drop it on the command line: "
                         f"{' '.join('~attention.' + k for k in unknown)}")


def attention_factory(attention: AttentionSpec, context: dict | None = None) -> Callable[[], AttentionBase | None]:
    """Turn an ``attention`` argument (as :class:`TransformerEncoder` takes it) into a per-layer builder.

    Layers outside this module (an app's own blocks, a swapped third-party model) use it to build one
    variant per layer exactly as the encoder does.

    Args:
        attention: an :class:`AttentionBase` (deep-copied per call), a callable returning one (a
            ``functools.partial`` or a Hydra ``_partial_: true`` config; called per call), or ``None``
            (dense: the builder returns ``None`` and :class:`MultiheadAttention` builds its own).
        context: ``num_heads``, ``head_dim``, ``max_seq_len`` of the layer; a callable gets the entries it
            requires (no default) and was not given, so parametrised variants (perceiver, linformer)
            are sized by the layer they sit in. ``None`` values are never passed.

    Returns:
        A zero-argument builder returning a fresh variant (or ``None``) per call.

    Raises:
        ValueError: when ``attention`` is none of the above, or the callable returns no AttentionBase.
    """
    if attention is None:
        return lambda: None  # each MultiheadAttention builds its own dense variant
    if isinstance(attention, AttentionBase):
        # a deep copy per layer: parametrised variants (e.g. linformer's projections) must not share weights
        return lambda: copy.deepcopy(attention)
    if callable(attention) and not isinstance(attention, nn.Module):
        _check_options(attention)
        extra = _fill_context(attention, context or {})

        def build() -> AttentionBase:
            return _check_attention(attention(**extra), "attention() (the per-layer factory's result)")

        return build
    raise ValueError(
        "attention must be an AttentionBase instance, a zero-argument callable returning one (e.g. a "
        f"functools.partial or a Hydra `_partial_: true` config), or None for dense; got {type(attention).__name__}"
    )


class TransformerEncoder(nn.Module):
    """A stack of pre-norm :class:`TransformerBlock`\\ s with optional positions and a final LayerNorm.

    Args:
        dim: model width C.
        depth: number of blocks.
        num_heads: attention heads.
        attention: an :class:`AttentionBase` (deep-copied per layer), a zero-argument callable returning
            one (called per layer; how Hydra ``_partial_: true`` configs arrive), or ``None`` (dense).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        dropout: dropout on the input (after positions), after attention and inside the MLPs.
        drop_path: stochastic depth of the last block; block ``i`` gets ``drop_path * i / (depth - 1)``
            (linear decay, Huang et al. 2016).
        positions: ``"none"``, ``"learned"`` (absolute embeddings, needs ``max_len``) or ``"rotary"``
            (RoPE in every block, Su et al. 2021).
        max_len: longest input for learned positions.
        gradient_checkpointing: recompute each block in the backward pass while training (less memory).
        final_norm: apply a LayerNorm after the last block.
        norm_eps: epsilon of every LayerNorm (the blocks' and the final one).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, *, attention: AttentionSpec = None,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0, positions: str = "none",
                 max_len: int | None = None, gradient_checkpointing: bool = False, final_norm: bool = True,
                 norm_eps: float = 1e-6):
        super().__init__()
        check_int("depth", depth, min_value=1)
        _check_dim_heads(dim, num_heads)
        self.positions = check_choice("positions", positions, POSITIONS)
        if positions == "learned" and max_len is None:
            raise ValueError("positions='learned' needs max_len (the longest input length); got max_len=None")
        self.max_len = None if max_len is None else check_int("max_len", max_len, min_value=1)
        self.dim = dim
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if positions == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, max_len, dim))  # (1, max_len, C)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_parameter("pos_embed", None)
        self.pos_drop = nn.Dropout(check_float("dropout", dropout, min_value=0.0, max_value=1.0))
        check_float("drop_path", drop_path, min_value=0.0, max_value=1.0)
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]
        context = {"num_heads": num_heads, "head_dim": dim // num_heads, "max_seq_len": max_len}
        make_attention = attention_factory(attention, context)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, attention=make_attention(), mlp_ratio=mlp_ratio, dropout=dropout,
                             drop_path=rate, rotary=positions == "rotary", norm_eps=norm_eps)
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if final_norm else nn.Identity()
        self.position_offset = 0  # absolute position of x[:, 0] (set by core_attn.streaming.position_offset)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """(B, N, C) -> (B, N, C); ``key_padding_mask`` (B, N) bool, True = padding key to ignore."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, N, C={self.dim}); got {tuple(x.shape)}")
        n, first = x.shape[1], self.position_offset
        if self.pos_embed is not None:
            if first + n > self.max_len:
                raise ValueError(f"input length N={first + n} exceeds max_len={self.max_len} of the learned positions")
            x = x + self.pos_embed[:, first:first + n]
        x = self.pos_drop(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, key_padding_mask, use_reentrant=False)
            else:
                x = block(x, key_padding_mask)
        return self.norm(x)
