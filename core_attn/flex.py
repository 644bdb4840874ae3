"""The ``flex`` backend: compiled FlexAttention driven by a pattern's ``mask_mod``.

FlexAttention (``torch.nn.attention.flex_attention``) turns a pattern into a ``BlockMask`` and skips
empty blocks. In torch 2.9.1 it compiles and runs forward on CPU but has no CPU backward, so the
``flex`` backend reports itself unusable for CPU training and ``auto`` uses it on CUDA only (for inputs
that are not short and dense enough for the ``dense`` backend, and head dims of at least 16).
"""

from __future__ import annotations

import torch
from torch import Tensor

from core_attn.patterns import Pattern

_COMPILED = None


# FlexAttention's CUDA kernels need head dims of at least 16 (torch 2.11: "NYI: embedding dimension of the
# query, key, and value must be at least 16").
MIN_CUDA_HEAD_DIM = 16


def unusable_reason(device: torch.device, needs_grad: bool, head_dim: int | None = None) -> str | None:
    """``None`` when FlexAttention can run here (for q/k/v of ``head_dim``), else why not."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as e:  # pragma: no cover - torch without FlexAttention
        return f"FlexAttention unavailable ({e})"
    if device.type == "cpu" and needs_grad:
        return "FlexAttention has no CPU backward in torch 2.9 (use 'blocked' for training on CPU)"
    if device.type not in ("cpu", "cuda"):
        return f"FlexAttention does not support device {device.type!r}"
    if device.type == "cuda" and head_dim is not None and head_dim < MIN_CUDA_HEAD_DIM:
        return f"FlexAttention's CUDA kernels need head_dim >= {MIN_CUDA_HEAD_DIM}; got {head_dim}"
    return None


def _compiled():
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def _ordered(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """(count, indices) of the nonzero entries of each row of a (B, H, QB, KB) block matrix, the indices
    of nonzero entries first and in order (FlexAttention's ``kv_num_blocks`` / ``kv_indices`` layout)."""
    blocks = blocks.to(torch.int32)
    order = torch.argsort(blocks, dim=-1, descending=True, stable=True)
    return blocks.sum(-1).to(torch.int32).contiguous(), order.to(torch.int32).contiguous()


def build_block_mask(mask_mod, batch: int | None, n: int, device, block: int = 128,
                     chunk_elements: int = 1 << 24):
    """The ``BlockMask`` that ``create_block_mask(mask_mod, batch, None, n, n, device)`` returns, built a
    slab of query blocks at a time: ``mask_mod`` sees about ``chunk_elements`` (query, key) pairs per call
    instead of the whole N x N grid (which ``create_block_mask`` materializes with int64 index tensors
    beside it: 2.9 GB at N = 16k, out of memory on a 141 GB GPU at N = 128k). ``mask_mod`` must broadcast
    over tensor arguments (every ``Pattern.mask_mod`` does: ``dense_mask`` calls the same functions)."""
    from torch.nn.attention.flex_attention import BlockMask

    bsz, nb = batch or 1, -(-n // block)
    full = torch.zeros(bsz, 1, nb, nb, dtype=torch.bool, device=device)
    partial = torch.zeros_like(full)
    kv_idx = torch.arange(n, device=device).view(1, 1, 1, n)
    b_idx = torch.arange(bsz, device=device).view(bsz, 1, 1, 1)
    h_idx = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    step = max(1, chunk_elements // (bsz * nb * block * block))  # query blocks per slab
    for start in range(0, nb, step):
        stop = min(nb, start + step)
        q_idx = torch.arange(start * block, min(stop * block, n), device=device).view(1, 1, -1, 1)
        m = mask_mod(b_idx, h_idx, q_idx, kv_idx).expand(bsz, 1, q_idx.shape[2], n)
        m = torch.nn.functional.pad(m, (0, nb * block - n, 0, (stop - start) * block - q_idx.shape[2]))
        counts = m.view(bsz, 1, stop - start, block, nb, block).sum((3, 5), dtype=torch.int32)
        full[:, :, start:stop] = counts == block * block
        partial[:, :, start:stop] = (counts > 0) & (counts < block * block)
    kv_num, kv_indices = _ordered(partial)
    full_num, full_indices = _ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_indices, full_num, full_indices, BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(n, n))


def flex_pattern_attention(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern,
                           key_padding_mask: Tensor | None = None, cache: dict | None = None) -> Tensor:
    """Attention restricted to ``pattern`` via compiled FlexAttention; (B, H, N, D) -> (B, H, N, Dv)."""
    b, h, n, _ = q.shape
    kpm = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
    key = (n, str(q.device), b if kpm is not None else None)
    block_mask = None if (cache is None or kpm is not None) else cache.get(key)
    if block_mask is None:
        mask_mod = pattern.mask_mod(n, q.device, kpm)
        block_mask = build_block_mask(mask_mod, b if kpm is not None else None, n, q.device)
        if cache is not None and kpm is None:
            cache[key] = block_mask
    # contiguous inputs: the compiled backward asserts the strides it saw in the forward, and tensors saved
    # for backward come back contiguous from activation offloading (save_on_cpu), while q/k/v are often
    # strided views of one qkv projection
    q, k, v = (t.contiguous() for t in (q, k, v))
    return _compiled()(q, k, v, block_mask=block_mask)
