"""The eager block-sparse attention kernel (forward and backward) behind every pattern variant.

:func:`block_sparse_attention` runs one :class:`~core_attn.patterns.Part`: queries in blocks, each block
visiting a short list of key blocks gathered from a (possibly permuted) sequence. It is a custom
autograd function in the manner of FlashAttention: the forward keeps only the output and the row
log-sum-exp, the backward recomputes the scores block by block, so memory grows with the number of
visited pairs in one chunk, not with the whole pattern. :func:`pattern_attention` runs all parts of a
pattern and merges them exactly through their log-sum-exps.

References: Dao et al. 2022 (FlashAttention) for the recompute-in-backward scheme; Milakov &
Gimelshein 2018 for merging partial softmaxes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core_attn.patterns import Part, Pattern

# Elements of one chunk's score tensor (B * H * blocks * block_q * keys); ~8M fp32 = 32 MB.
CHUNK_ELEMENTS = 1 << 23


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics and gradient accumulators: fp32 for half types, fp64 stays fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_blocks(b: int, h: int, block_q: int, keys: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, b * h * block_q * keys))


def _gather_blocks(x_b: Tensor, idx: Tensor) -> Tensor:
    """x_b: (B, H, nb, bk, D), idx: (c, C) -> (B, H, c, C * bk, D)."""
    b, h, _, bk, d = x_b.shape
    c, cc = idx.shape
    return x_b[:, :, idx.reshape(-1)].reshape(b, h, c, cc * bk, d)


def _chunk_mask(part_mask, q_pos_b: Tensor, k_pos_b: Tensor, idx: Tensor, s: int, e: int,
                key_pad: Tensor | None) -> tuple[Tensor, Tensor]:
    """The boolean mask (Bm, Hm, c, bq, C * bk) of chunk [s, e) and the clamped key-block index."""
    blk = idx[..., s:e, :]
    valid_blk = blk >= 0
    blk0 = blk.clamp(min=0)
    kp = k_pos_b[..., blk0, :]  # (.., c, C, bk)
    kp = torch.where(valid_blk[..., None], kp, -1).flatten(-2)  # (.., c, C*bk)
    qp = q_pos_b[..., s:e, :]  # (.., c, bq)
    qi, kj = qp[..., :, None], kp[..., None, :]
    m = part_mask(qi, kj) & (kj >= 0) & (qi >= 0)
    if key_pad is not None:  # (B, n + 1): slot n is the padding position
        kp_i = torch.where(kp >= 0, kp, key_pad.shape[1] - 1)
        if kp_i.dim() == 2:  # positions shared by the batch: (B, 1, c, C*bk)
            pad = key_pad[:, kp_i][:, None]
        else:  # positions per batch element and head (LSH): (B, H, c, C*bk)
            bidx = torch.arange(key_pad.shape[0], device=kp.device).view(-1, *([1] * (kp_i.dim() - 1)))
            pad = key_pad[bidx, kp_i]
        m = m & ~pad[..., None, :]
    while m.dim() < 5:
        m = m[None]
    return m, blk0


def band_offset(kv_index: Tensor) -> int | None:
    """``o0`` when every listed key block of row r, column c is ``r + c + o0`` (a band, as local and
    BigBird-window plans are); ``None`` otherwise. Bands accumulate key gradients by slices."""
    if kv_index.dim() != 2:
        return None
    rows, cols = kv_index.shape
    base = kv_index - torch.arange(rows, device=kv_index.device)[:, None] - torch.arange(cols, device=kv_index.device)
    vals = base[kv_index >= 0]
    if vals.numel() == 0 or not bool((vals == vals[0]).all()):
        return None
    return int(vals[0])


def _scatter_blocks(acc: Tensor, contrib: Tensor, blk0: Tensor, s: int, band: int | None) -> None:
    """acc (B, H, nkb, X) += contributions (B, H, c, C, X) of the key blocks ``blk0`` (c, C)."""
    b, h, c, cc, x = contrib.shape
    if band is None:
        acc.index_add_(2, blk0.reshape(-1), contrib.reshape(b, h, c * cc, x))
        return
    nkb = acc.shape[2]
    for o in range(cc):  # column o of rows s..s+c-1 is the slice of key blocks s+o+band ...
        first = s + o + band
        r0, r1 = max(0, -first), min(c, nkb - first)
        if r1 > r0:  # entries outside [0, nkb) are unlisted blocks: their contributions are zero
            acc[:, :, first + r0:first + r1] += contrib[:, :, r0:r1, o]


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_pos, k_pos, kv_index, block_q, block_k, part_mask, key_pad, scale, band):
        b, h, lq, d = q.shape
        lk = k.shape[2]
        nqb, nkb = lq // block_q, lk // block_k
        acc = _acc_dtype(q.dtype)
        qs = q * scale  # fold the softmax scale into q once, not into every score block
        qb = qs.view(b, h, nqb, block_q, d)
        kb, vb = k.view(b, h, nkb, block_k, d), v.view(b, h, nkb, block_k, -1)
        q_pos_b = q_pos.view(*q_pos.shape[:-1], nqb, block_q)
        k_pos_b = k_pos.view(*k_pos.shape[:-1], nkb, block_k)
        out = q.new_empty(b, h, nqb, block_q, v.shape[-1])
        lse = torch.empty(b, h, nqb, block_q, dtype=acc, device=q.device)
        cq = _chunk_blocks(b, h, block_q, kv_index.shape[-1] * block_k)
        masks = []
        for s in range(0, nqb, cq):
            e = min(nqb, s + cq)
            m, blk0 = _chunk_mask(part_mask, q_pos_b, k_pos_b, kv_index, s, e, key_pad)
            masks.append(m)
            kc, vc = _gather_blocks(kb, blk0), _gather_blocks(vb, blk0)
            sc = torch.matmul(qb[:, :, s:e], kc.transpose(-1, -2)).to(acc)
            sc.masked_fill_(~m, float("-inf"))
            mx = sc.amax(-1, keepdim=True)
            mx.masked_fill_(torch.isinf(mx), 0.0)  # rows with no visible key: exp(-inf) = 0 below
            p = sc.sub_(mx).exp_()  # separate passes beat torch.softmax on CPU here (measured)
            l = p.sum(-1, keepdim=True)
            o = torch.matmul(p.to(v.dtype), vc)
            out[:, :, s:e] = o.div_(l.clamp_min(1e-30).to(o.dtype))
            lse[:, :, s:e] = (mx + l.log()).squeeze(-1)
        ctx.save_for_backward(qs, k, v, kv_index, lse)
        ctx.masks, ctx.meta = masks, (block_q, block_k, scale, cq, band)
        ctx.set_materialize_grads(False)  # an unused lse gets no zero-filled gradient to multiply
        return out.view(b, h, lq, -1), lse.view(b, h, lq)

    @staticmethod
    def backward(ctx, dout, dlse):
        qs, k, v, kv_index, lse = ctx.saved_tensors
        lse_safe = lse.masked_fill(torch.isinf(lse), 0.0)  # rows with no visible key
        if dout is None:  # only the lse was used
            dout = torch.zeros(*qs.shape[:3], v.shape[-1], dtype=v.dtype, device=v.device)
        block_q, block_k, scale, cq, band = ctx.meta
        b, h, lq, d = qs.shape
        dv_dim = v.shape[-1]
        nqb, nkb = lq // block_q, k.shape[2] // block_k
        acc = _acc_dtype(qs.dtype)
        qb = qs.view(b, h, nqb, block_q, d)
        kb, vb = k.view(b, h, nkb, block_k, d), v.view(b, h, nkb, block_k, dv_dim)
        dout = dout.reshape(b, h, nqb, block_q, -1)
        dq = torch.empty(b, h, nqb, block_q, d, dtype=qs.dtype, device=qs.device)
        dk = torch.zeros(b, h, nkb, block_k * d, dtype=acc, device=k.device)
        dv = torch.zeros(b, h, nkb, block_k * dv_dim, dtype=acc, device=v.device)
        if dlse is not None:
            dlse = dlse.view(b, h, nqb, block_q).to(acc)
        for ci, s in enumerate(range(0, nqb, cq)):
            e = min(nqb, s + cq)
            m = ctx.masks[ci]
            blk0 = kv_index[s:e].clamp(min=0)
            kc, vc = _gather_blocks(kb, blk0), _gather_blocks(vb, blk0)
            qc, doc = qb[:, :, s:e], dout[:, :, s:e]
            sc = torch.matmul(qc, kc.transpose(-1, -2)).to(acc).masked_fill_(~m, float("-inf"))
            p = sc.sub_(lse_safe[:, :, s:e, :, None]).exp_()  # the probabilities, recomputed
            dv_c = torch.matmul(p.to(doc.dtype).transpose(-1, -2), doc)  # (B, H, c, C*bk, Dv)
            dp = torch.matmul(doc, vc.transpose(-1, -2)).to(acc)
            # dL/dscores = p * (dp - rowsum(dp * p)) [+ p * dlse when the lse feeds a merge]
            ds = torch._softmax_backward_data(dp, p, -1, acc)
            if dlse is not None:
                ds.addcmul_(p, dlse[:, :, s:e, :, None])
            ds = ds.to(qs.dtype)
            dq[:, :, s:e] = torch.matmul(ds, kc).mul_(scale)  # scores = (q * scale) k^T
            dk_c = torch.matmul(ds.transpose(-1, -2), qc)  # (B, H, c, C*bk, D), qc already scaled
            cc = blk0.shape[1]
            _scatter_blocks(dk, dk_c.reshape(b, h, e - s, cc, block_k * d).to(acc), blk0, s, band)
            _scatter_blocks(dv, dv_c.reshape(b, h, e - s, cc, block_k * dv_dim).to(acc), blk0, s, band)
        dq = dq.view(b, h, lq, d)
        dk = dk.view(b, h, -1, d).to(k.dtype)
        dv = dv.view(b, h, -1, dv_dim).to(v.dtype)
        return dq, dk, dv, None, None, None, None, None, None, None, None, None


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, part: Part, part_mask=None,
                           key_pad: Tensor | None = None, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention over the pairs of one part, in the part's visiting order.

    Args:
        q, k, v: (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, Dv), already gathered in visiting order.
        part: the plan (block sizes, key-block lists, original positions).
        part_mask: predicate over original positions (default ``part.mask``).
        key_pad: (B, n + 1) bool, True = padded key; the last slot stands for positions of -1.
        scale: softmax scale (default ``1 / sqrt(D)``).

    Returns:
        ``out`` (B, H, Lq, Dv) and ``lse`` (B, H, Lq) in fp32; rows with no visible key give 0 and -inf.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if part.band is None:  # computed once per plan; False = not a band
        offset = band_offset(part.kv_index)
        part.band = False if offset is None else offset
    band = None if part.band is False else part.band
    return _BlockSparseAttention.apply(q, k, v, part.q_pos, part.k_pos, part.kv_index, part.block_q,
                                       part.block_k, part_mask or part.mask, key_pad, scale, band)


def _take(x: Tensor, pos: Tensor, identity: bool, n: int) -> Tensor:
    """Rows of x (B, H, n, D) at positions ``pos`` (-1 -> a zero row)."""
    if identity:
        pad = pos.numel() - n
        return torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
    x_ext = torch.nn.functional.pad(x, (0, 0, 0, 1))
    return x_ext.index_select(2, torch.where(pos >= 0, pos, n))


def _place(y: Tensor, pos: Tensor, identity: bool, n: int, fill: float) -> Tensor:
    """Inverse of :func:`_take` for outputs: y (B, H, L, ...) in visiting order -> (B, H, n, ...)."""
    if identity:
        return y[:, :, :n]
    shape = list(y.shape)
    shape[2] = n + 1
    base = y.new_full(shape, fill)
    return base.index_copy(2, torch.where(pos >= 0, pos, n), y)[:, :, :n]


def merge_partials(outs: list[Tensor], lses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Combine softmax attention over disjoint key sets: weights exp(lse_p - lse) (exact)."""
    if len(outs) == 1:
        return outs[0], lses[0]
    # Not torch.logsumexp: its backward is NaN on rows where every partial is -inf (a query that sees
    # no key at all). The shift mx is a constant of the result, so detaching it is exact.
    stacked = torch.stack(lses)  # (P, ...)
    mx = stacked.amax(0).detach()
    mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    w = torch.exp(stacked - mx)  # 0 for -inf partials
    total = w.sum(0)
    seen = total > 0
    total = torch.where(seen, total, torch.ones_like(total))
    out = None
    for o, wp in zip(outs, w):
        term = o * (wp / total).unsqueeze(-1).to(o.dtype)
        out = term if out is None else out + term
    lse = torch.where(seen, mx + total.log(), torch.full_like(mx, float("-inf")))
    return out, lse


def pattern_attention(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern,
                      key_padding_mask: Tensor | None = None, scale: float | None = None,
                      parts: list[Part] | None = None) -> Tensor:
    """Exact attention restricted to ``pattern`` (self-attention: q, k, v share the length N).

    Args:
        q, k, v: (B, H, N, D).
        pattern: the sparsity pattern; causal patterns also hide j > i.
        key_padding_mask: (B, N) bool, True marks padding keys (``torch.nn.MultiheadAttention``'s rule).
        parts: precomputed ``pattern.parts(N)`` (cached by the attention modules).

    Returns:
        (B, H, N, Dv); a query that sees no key gets zeros.
    """
    n = q.shape[2]
    parts = pattern.parts(n, q.device) if parts is None else parts
    key_pad = None
    if key_padding_mask is not None:
        key_pad = torch.nn.functional.pad(key_padding_mask.to(torch.bool), (0, 1), value=True)
    outs, lses = [], []
    for p, part in enumerate(parts):
        earlier = [pp.mask for pp in parts[:p]]

        def part_mask(i, j, part=part, earlier=earlier):
            m = part.mask(i, j)
            for em in earlier:  # each pair belongs to the first part that visits it
                m = m & ~em(i, j)
            if pattern.is_causal:
                m = m & (j <= i)
            return m

        qp = _take(q, part.q_pos, part.identity_q, n)
        kp = _take(k, part.k_pos, part.identity_k, n)
        vp = _take(v, part.k_pos, part.identity_k, n)
        o, lse = block_sparse_attention(qp, kp, vp, part, part_mask, key_pad, scale)
        outs.append(_place(o, part.q_pos, part.identity_q, n, 0.0))
        lses.append(_place(lse, part.q_pos, part.identity_q, n, float("-inf")))
    out, _ = merge_partials(outs, lses)
    return out
