"""The ``flex`` backend: compiled FlexAttention driven by a pattern's ``mask_mod``.

FlexAttention (``torch.nn.attention.flex_attention``) turns a pattern into a ``BlockMask`` and skips
empty blocks. In torch 2.9.1 it compiles and runs forward on CPU but has no CPU backward, so the
``flex`` backend reports itself unusable for CPU training and ``auto`` uses it on CUDA only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core_attn.patterns import Pattern

_COMPILED = None


def unusable_reason(device: torch.device, needs_grad: bool) -> str | None:
    """``None`` when FlexAttention can run here, else why not."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as e:  # pragma: no cover - torch without FlexAttention
        return f"FlexAttention unavailable ({e})"
    if device.type == "cpu" and needs_grad:
        return "FlexAttention has no CPU backward in torch 2.9 (use 'blocked' for training on CPU)"
    if device.type not in ("cpu", "cuda"):
        return f"FlexAttention does not support device {device.type!r}"
    return None


def _compiled():
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def flex_pattern_attention(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern,
                           key_padding_mask: Tensor | None = None, cache: dict | None = None) -> Tensor:
    """Attention restricted to ``pattern`` via compiled FlexAttention; (B, H, N, D) -> (B, H, N, Dv)."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, h, n, _ = q.shape
    kpm = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
    key = (n, str(q.device), b if kpm is not None else None)
    block_mask = None if (cache is None or kpm is not None) else cache.get(key)
    if block_mask is None:
        mask_mod = pattern.mask_mod(n, q.device, kpm)
        block_mask = create_block_mask(mask_mod, b if kpm is not None else None, None, n, n, device=q.device)
        if cache is not None and kpm is None:
            cache[key] = block_mask
    return _compiled()(q, k, v, block_mask=block_mask)
