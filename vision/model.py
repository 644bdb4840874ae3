"""A Vision Transformer for large images whose attention is any core_attn variant.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"
(arXiv:2010.11929). Names follow timm's ``VisionTransformer`` (``patch_embed``, ``cls_token``, ``head``,
``forward_features``/``forward_head``) so habits and tools carry over; the blocks are
:class:`core_attn.layers.TransformerEncoder`, so a 2048x2048 image (4,096 patches of 32 px) trains with
memory linear in the number of patches under a sparse or low-rank variant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from core_attn.attention.base import AttentionBase
from core_attn.layers import TransformerEncoder
from core_attn.validation import check_choice, check_int


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, int):
        return check_int(name, size, min_value=1), size
    if len(size) != 2:
        raise ValueError(f"{name}={list(size)} must be an int or [height, width]")
    return check_int(name, size[0], min_value=1), check_int(name, size[1], min_value=1)


def _conv_stem(patch_size: int, in_chans: int, dim: int) -> nn.Sequential:
    """Early convolutions (Xiao et al. 2021, "Early Convolutions Help Transformers See Better",
    arXiv:2106.14881) with total stride ``patch_size``: a 4x4 stride-4 convolution (cheap on large
    images), then 3x3 stride-2 convolutions, each followed by BatchNorm + ReLU, widths doubling up to
    ``dim``, then a 1x1 convolution to ``dim``. Tokens see past their patch (receptive field about
    2 x patch_size), so the stem recognises strokes that cross patch borders."""
    n = patch_size.bit_length() - 1
    if patch_size != 1 << n or n < 2:
        raise ValueError(f"stem='conv' needs a power-of-two patch_size >= 4; got patch_size={patch_size}")
    layers: list[nn.Module] = []
    cin, stages = in_chans, n - 1  # one 4x4/4 stage, then n - 2 stages of 3x3/2
    for i in range(stages):
        w = max(8, dim >> (stages - 1 - i))
        conv = (nn.Conv2d(cin, w, kernel_size=4, stride=4, bias=False) if i == 0 else
                nn.Conv2d(cin, w, kernel_size=3, stride=2, padding=1, bias=False))
        layers += [conv, nn.BatchNorm2d(w), nn.ReLU()]
        cin = w
    layers.append(nn.Conv2d(cin, dim, kernel_size=1))
    return nn.Sequential(*layers)


class PatchEmbed(nn.Module):
    """``patch_size`` patches -> ``dim`` channels: one strided convolution (ViT), or a stack of strided
    3x3 convolutions (``stem="conv"``).

    Args:
        img_size: input side, or (height, width); divisible by ``patch_size``.
        patch_size: patch side in pixels.
        in_chans: input channels.
        dim: embedding width.
        stem: ``patch`` (one convolution) or ``conv`` (early convolutions, Xiao et al. 2021).
    """

    def __init__(self, img_size: int | Sequence[int], patch_size: int, in_chans: int, dim: int, stem: str = "patch"):
        super().__init__()
        self.img_size = _pair(img_size, "img_size")
        check_int("patch_size", patch_size, min_value=1)
        if any(s % patch_size for s in self.img_size):
            raise ValueError(f"img_size={self.img_size} is not divisible by patch_size={patch_size}; "
                             "choose a patch size that divides the image size")
        self.grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.in_chans = in_chans
        check_choice("stem", stem, ("patch", "conv"))
        if stem == "patch":
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        else:
            self.proj = _conv_stem(patch_size, in_chans, dim)
        # channels-last weights: oneDNN's weight gradient of a strided convolution over a 1-channel
        # 512x512 image is about 12x faster than with NCHW weights (0.02 s vs 0.23 s for batch 16 on one
        # CPU core, measured), and the (B, dim, gh, gw) output then flattens to tokens without a copy
        self.proj.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, dim) in raster order."""
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.img_size or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (B, {self.in_chans}, {self.img_size[0]}, "
                             f"{self.img_size[1]}); got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, dim, gh, gw) -> (B, N, dim)


class VisionTransformer(nn.Module):
    """Patch embedding, a core_attn transformer encoder, pooling and a linear head.

    Args:
        img_size: input side, or (height, width).
        in_chans: input channels.
        num_classes: classes of the head (0: no head, ``forward`` returns pooled features).
        patch_size: patch side in pixels.
        stem: ``patch`` (one strided convolution, as ViT) or ``conv`` (early convolutions, Xiao et al. 2021).
        dim: model width.
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width as a multiple of ``dim``.
        pool: ``mean`` (average of patch tokens) or ``cls`` (a class token at position 0; with a local
            variant give it ``global_tokens=[0]`` so it sees the whole image).
        pool_norm: the norm of the pooled (B, dim) features: ``layer`` (LayerNorm per image: timm's
            ``fc_norm`` for mean pooling, the encoder's final norm for ``cls``) or ``batch`` (BatchNorm1d
            over the batch). ``batch`` removes the part of the pooled features that every image shares,
            such as the mean of hundreds of identical background tokens around a few small objects;
            under ``layer`` that shared part dominates the normalised features and its gradient is
            noise, so a sparse large-image task can stay at chance (see docs/vision.md). ``batch``
            needs training batches of at least 2 images.
        positions: ``learned`` (absolute, as ViT), ``rotary`` (RoPE over the raster order) or ``none``.
        dropout: dropout in the blocks.
        drop_path: stochastic depth of the last block.
        attention: the variant: a zero-argument factory (a Hydra ``_partial_`` config), an instance, or
            ``None`` for dense.
        gradient_checkpointing: recompute blocks in the backward pass (memory for time).
        norm_eps: epsilon of the LayerNorms (blocks, final norm, ``fc_norm``); Hugging Face ViTs use 1e-12.
    """

    def __init__(self, *, img_size: int | Sequence[int], in_chans: int = 3, num_classes: int = 1000,
                 patch_size: int = 16, stem: str = "patch", dim: int = 192, depth: int = 4, num_heads: int = 3, mlp_ratio: float = 4.0,
                 pool: str = "mean", pool_norm: str = "layer", positions: str = "learned", dropout: float = 0.0,
                 drop_path: float = 0.0,
                 attention: Callable[[], nn.Module] | nn.Module | None = None, gradient_checkpointing: bool = False,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, min_value=0)
        self.pool = check_choice("pool", pool, ("mean", "cls"))
        self.pool_norm = check_choice("pool_norm", pool_norm, ("layer", "batch"))
        self.num_features = dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dim, stem)
        self.num_prefix_tokens = 1 if pool == "cls" else 0
        if pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            nn.init.normal_(self.cls_token, std=1e-6)
        else:
            self.register_parameter("cls_token", None)
        self.encoder = TransformerEncoder(
            dim, depth, num_heads, attention=attention, mlp_ratio=mlp_ratio, dropout=dropout, drop_path=drop_path,
            positions=positions, max_len=self.patch_embed.num_patches + self.num_prefix_tokens,
            gradient_checkpointing=gradient_checkpointing, final_norm=pool == "cls" and pool_norm == "layer",
            norm_eps=norm_eps)
        # mean pooling normalises after pooling (timm's fc_norm): tokens keep their own scale, so a few
        # informative tokens among many background ones are not diluted by a per-token norm
        if pool_norm == "batch":
            self.fc_norm = nn.BatchNorm1d(dim, eps=1e-6)
        else:
            self.fc_norm = nn.LayerNorm(dim, eps=norm_eps) if pool == "mean" else nn.Identity()
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        self._init_linear(self)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        """timm's ViT init: every ``nn.Linear`` truncated-normal(0.02) with zero bias, which keeps the
        residual branches small at the start; layers inside an attention variant keep their own init."""
        if isinstance(module, AttentionBase):
            return
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        for child in module.children():
            VisionTransformer._init_linear(child)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (timm's convention)."""
        return {"cls_token", "encoder.pos_embed"}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, prefix + N, dim) token features (normed per token for ``pool="cls"`` with
        ``pool_norm="layer"``)."""
        x = self.patch_embed(x)  # (B, N, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, dim)
        return self.encoder(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool (B, prefix + N, dim) tokens to (B, dim), then the head (unless ``pre_logits``)."""
        x = self.fc_norm(x[:, 0] if self.pool == "cls" else x.mean(dim=1))  # (B, dim)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))
