"""Any timm Vision Transformer, its attention computed by a core_attn variant.

``build_timm_vit(name="vit_small_patch16_224", img_size=1024, attention=...)`` builds the timm model
(``timm.create_model``, random init, never a download), optionally loads weights from a local file, then
replaces every ``timm.layers.Attention`` with :class:`SwappedAttention`: the same ``qkv``, ``q_norm``/
``k_norm``, ``proj`` modules (so the weights and their state-dict names are timm's), with the attention
itself computed by the selected variant. With ``attention=dense`` the swapped model computes exactly what
timm computes (both run ``F.scaled_dot_product_attention``).

Prefix tokens: timm puts the class token (and register tokens) at positions ``0..P-1`` of the sequence
and the variant sees the whole sequence, prefix included. Under a local pattern the class token then
sees only its window; with ``global_pool="token"`` (timm's default for ``vit_*``) give it
``attention.global_tokens=[0]`` (``[0, ..., P-1]`` with register tokens) so it attends to, and is seen
by, every patch. Nothing is rewritten for you; a warning says so when the class token cannot see the
whole image. BigBird's first global block already covers position 0.

Reference: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (arXiv:2010.11929); Wightman,
"PyTorch Image Models" (timm).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core_attn.attention.base import AttentionBase, PatternAttention
from core_attn.layers import attention_factory
from core_attn.registry import build_attention
from core_attn.validation import did_you_mean

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class SwappedAttention(nn.Module):
    """timm's multi-head self-attention with the attention op replaced by a core_attn variant.

    Keeps the modules of the ``timm.layers.Attention`` it replaces (``qkv``, ``q_norm``, ``k_norm``,
    ``norm``, ``gate``, ``proj``, ``proj_drop``), so parameter names and values are unchanged and a timm
    checkpoint loads into it; only ``softmax(q k^T / sqrt(d)) v`` is delegated to ``attention``.

    Args:
        timm_attention: the ``timm.layers.Attention`` to take the projections from.
        attention: the core_attn variant computing (B, H, N, hd) q, k, v -> (B, H, N, hd).
    """

    def __init__(self, timm_attention: nn.Module, attention: AttentionBase):
        super().__init__()
        if not isinstance(attention, AttentionBase):
            raise ValueError(f"attention must be an AttentionBase; got {type(attention).__name__}")
        drop = getattr(timm_attention, "attn_drop", None)
        if isinstance(drop, nn.Dropout) and drop.p > 0:
            raise ValueError(f"attn_drop_rate={drop.p} is not supported: core_attn variants have no dropout on the "
                             "attention weights; build the timm model with attn_drop_rate=0")
        self.num_heads = timm_attention.num_heads
        self.head_dim = timm_attention.head_dim
        self.attn_dim = getattr(timm_attention, "attn_dim", self.num_heads * self.head_dim)
        self.qkv = timm_attention.qkv
        self.q_norm = timm_attention.q_norm
        self.k_norm = timm_attention.k_norm
        norm = getattr(timm_attention, "norm", None)  # scale_norm (absent in older timm)
        self.norm = norm if norm is not None else nn.Identity()
        self.gate = getattr(timm_attention, "gate", None)
        self.proj = timm_attention.proj
        self.proj_drop = timm_attention.proj_drop
        self.attention = attention

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """(B, N, C) -> (B, N, C_out); timm's ``attn_mask``/``is_causal`` are refused (the variant's own
        configuration, e.g. ``attention.causal``, decides what is visible)."""
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask / is_causal are not supported by the swapped attention; configure "
                             "causality on the core_attn variant (attention.causal=true)")
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        x = self.attention(q, k, v)  # (B, H, N, hd)
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))  # (B, N, H * hd)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"


def swap_attention(model: nn.Module, attention: Callable[[], AttentionBase] | AttentionBase | None, *,
                   max_seq_len: int | None = None) -> int:
    """Replace every ``timm.layers.Attention`` in ``model`` by a :class:`SwappedAttention` (in place).

    Args:
        model: a timm model.
        attention: the variant, as :func:`core_attn.layers.attention_factory` takes it (a ``_partial_``
            factory gets ``num_heads``, ``head_dim`` and ``max_seq_len`` filled in per layer); ``None``: dense.
        max_seq_len: the longest token sequence (patches + prefix tokens), for variants sized by it.

    Returns:
        The number of attention modules swapped.

    Raises:
        ValueError: when the model has no ``timm.layers.Attention`` (e.g. EVA or BEiT blocks, which have
            their own attention classes with relative positions).
    """
    from timm.layers import Attention

    targets = [(name, m) for name, m in model.named_modules() if type(m) is Attention]
    if not targets:
        found = sorted({type(m).__name__ for m in model.modules() if "attention" in type(m).__name__.lower()})
        raise ValueError(f"{type(model).__name__} has no timm.layers.Attention modules to swap (attention "
                         f"classes found: {found or 'none'}); choose a ViT built from timm's Block/Attention, "
                         "e.g. vit_tiny_patch16_224, vit_small_patch16_224, deit_small_patch16_224")
    for name, module in targets:
        context = {"num_heads": module.num_heads, "head_dim": module.head_dim, "max_seq_len": max_seq_len}
        variant = attention_factory(attention, context)() or build_attention("dense")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, SwappedAttention(module, variant))
    return len(targets)


def _filter_fn(model: nn.Module) -> Callable | None:
    """The architecture's own checkpoint filter (timm's ``checkpoint_filter_fn`` in the model's module:
    resamples ``pos_embed`` to the model's grid and ``patch_embed`` to its patch size)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def load_weights_file(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load the local weight file ``path`` (``.pth``/``.pt``/``.bin``/``.safetensors``) into the timm ``model``.

    The state dict is read by timm's ``load_state_dict`` (a ``state_dict``/``model``/EMA entry or a bare
    dict), passed through the architecture's ``checkpoint_filter_fn`` (position embeddings resampled to
    the model's ``img_size`` with timm's ``resample_abs_pos_embed``), the input convolution adapted to the
    model's channels (timm's ``adapt_input_conv``), and a classifier of another size left out (the new
    head keeps its initialisation). Anything else that does not fit raises.

    Returns:
        ``{"dropped": [...]}``: the keys left out (a mismatched classifier).

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable file, or keys/shapes that do not fit.
    """
    from timm.models import adapt_input_conv, load_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.checkpoint_path={str(path)!r}: no such file (a local "
                                f"{'/'.join(WEIGHT_SUFFIXES)} of the model's weights; nothing is downloaded)")
    try:
        state = load_state_dict(str(path))
    except Exception as e:  # torch.load / safetensors raise many types for a corrupt or foreign file
        raise ValueError(f"model.checkpoint_path={str(path)!r}: unreadable weight file ({type(e).__name__}: {e})") from e
    filter_fn = _filter_fn(model)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    conv = getattr(getattr(model, "patch_embed", None), "proj", None)
    key = "patch_embed.proj.weight"
    if isinstance(conv, nn.Conv2d) and key in state and state[key].shape[1] != conv.in_channels:
        state[key] = adapt_input_conv(conv.in_channels, state[key])
    dropped = []
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    for k in [f"{h}.{p}" for h in heads for p in ("weight", "bias")]:
        if k in state and k in own and state[k].shape != own[k].shape:
            dropped.append(k)
            del state[k]
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and k not in dropped]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        raise ValueError(f"model.checkpoint_path={str(path)!r} does not fit {type(model).__name__}: "
                         f"shape mismatches {wrong[:5]}, missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
                         f" (is it a checkpoint of this architecture?)")
    model.load_state_dict(state, strict=not dropped)  # every other key was checked above
    if dropped:
        log.warning("%s: classifier %s has another number of classes; the new head keeps its init", path, dropped)
    return {"dropped": dropped}


def _warn_if_prefix_is_local(model: nn.Module, variant: AttentionBase, n: int) -> None:
    """Warn when the model pools the class token but the pattern hides part of the image from it."""
    if getattr(model, "global_pool", None) != "token" or not isinstance(variant, PatternAttention):
        return
    try:
        variant.check_length(n)
    except ValueError:
        return  # the first forward raises with the variant's own message
    seen = int(variant.pattern(n).mask_fn(n)(torch.zeros(1, 1, dtype=torch.long), torch.arange(n)[None]).sum())
    if seen < n:
        log.warning("global_pool='token' pools the class token (position 0), which sees only %d of %d tokens under "
                    "%r; add attention.global_tokens=[0] (local) so it sees the whole image, or use "
                    "model.global_pool=avg", seen, n, variant.name)


def build_timm_vit(*, name: str, img_size: int | list[int], in_chans: int, num_classes: int,
                   attention: Callable[[], AttentionBase] | AttentionBase | None = None,
                   checkpoint_path: str | None = None, depth: int | None = None, global_pool: str | None = None,
                   drop_rate: float = 0.0, drop_path_rate: float = 0.0, dynamic_img_size: bool = False,
                   gradient_checkpointing: bool = False, timm_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A timm ViT (``timm.create_model(name, pretrained=False, ...)``) with core_attn attention in every block.

    Args:
        name: a timm model name whose blocks use ``timm.layers.Attention`` (``vit_*``, ``deit*`` ...).
        img_size: input side (or [height, width]); position embeddings are made (or resampled) for it.
        in_chans: input channels.
        num_classes: classes of the head.
        attention: the variant: a ``_partial_`` factory (gets num_heads/head_dim/max_seq_len it requires),
            an instance (deep-copied per block), or ``None`` (dense).
        checkpoint_path: a local weight file to start from (see :func:`load_weights_file`); never downloaded.
        depth: number of blocks (``None``: the architecture's).
        global_pool: ``token`` | ``avg`` | ... (``None``: the architecture's; ``token`` for ``vit_*``).
        drop_rate: dropout rate (timm's ``drop_rate``).
        drop_path_rate: stochastic depth rate.
        dynamic_img_size: accept other input sizes (position embeddings interpolated per call).
        gradient_checkpointing: recompute blocks in the backward pass (timm's ``set_grad_checkpointing``).
        timm_kwargs: any other ``timm.create_model`` keyword (e.g. ``{"qk_norm": true}``).

    Returns:
        The timm model; ``model.num_classes`` is its number of classes.
    """
    import timm

    if not timm.is_model(name):
        raise ValueError(f"model.name={name!r} is not a timm model; e.g. vit_tiny_patch16_224, "
                         f"vit_small_patch16_224.{did_you_mean(name, timm.list_models('*vit*'))}")
    kwargs: dict[str, Any] = dict(timm_kwargs or {})
    kwargs.update(img_size=img_size, in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate,
                  drop_path_rate=drop_path_rate)
    if dynamic_img_size:
        kwargs["dynamic_img_size"] = True
    if depth is not None:
        kwargs["depth"] = depth
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:  # an argument the architecture does not take: name it
        raise ValueError(f"timm model {name!r} refused its arguments {sorted(kwargs)}: {e}") from None
    if checkpoint_path:
        load_weights_file(model, checkpoint_path)
    n = model.patch_embed.num_patches + getattr(model, "num_prefix_tokens", 0)
    count = swap_attention(model, attention, max_seq_len=n)
    first = next(m.attention for m in model.modules() if isinstance(m, SwappedAttention))
    log.info("%s: %d attention modules now compute with core_attn %r", name, count, first.name)
    _warn_if_prefix_is_local(model, first, n)
    if gradient_checkpointing:
        model.set_grad_checkpointing(True)
    return model
