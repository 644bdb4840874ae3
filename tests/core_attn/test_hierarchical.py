"""Hierarchical (two-level) attention against plain loops over segments, incl. gradients."""

import math

import pytest
import torch

import core_attn
from core_attn.attention.hierarchical import HierarchicalAttention


def _softmax_rows(q, k, v, visible):
    """Plain attention for one (b, h): q (Nq, D), k (Nk, D), v (Nk, Dv), visible (Nq, Nk) lists of bools."""
    rows = []
    for i in range(q.shape[0]):
        cols = [j for j in range(k.shape[0]) if visible[i][j]]
        if not cols:
            rows.append(torch.zeros(v.shape[-1], dtype=v.dtype))
            continue
        cols = torch.tensor(cols)
        w = torch.softmax(k[cols] @ q[i] / math.sqrt(q.shape[-1]), 0)  # (len(cols),)
        rows.append(w @ v[cols])
    return torch.stack(rows)


def hierarchical_reference(q, k, v, s, causal, kpm=None):
    """out_i = softmax over i's segment (+causal, -padding) + summary attention of seg(i)."""
    b, h, n, _ = q.shape
    real = torch.ones(b, n, dtype=torch.bool) if kpm is None else ~kpm
    segs = [list(range(c * s, min(n, (c + 1) * s))) for c in range(math.ceil(n / s))]
    out = torch.zeros(b, h, n, v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            Q, K, V = q[bi, hi], k[bi, hi], v[bi, hi]
            local_vis = [[i // s == j // s and bool(real[bi, j]) and (j <= i or not causal) for j in range(n)]
                         for i in range(n)]
            local = _softmax_rows(Q, K, V, local_vis)
            means = []
            for idx in segs:
                toks = [t for t in idx if real[bi, t]]
                means.append([torch.stack([x[t] for t in toks]).mean(0) if toks else torch.zeros_like(x[0])
                              for x in (Q, K, V)])
            qm, km, vm = (torch.stack([m[a] for m in means]) for a in range(3))
            nonempty = [any(real[bi, t] for t in idx) for idx in segs]
            if causal:  # segment c asks with segment c - 1's query, sees segments < c
                qm = torch.cat([torch.zeros_like(qm[:1]), qm[:-1]])
                vis = [[nonempty[d] and d < c for d in range(len(segs))] for c in range(len(segs))]
            else:
                vis = [[nonempty[d] for d in range(len(segs))] for _ in segs]
            summ = _softmax_rows(qm, km, vm, vis)
            out[bi, hi] = local + summ[torch.arange(n) // s]
    return out


def _qkv(b=2, h=2, n=19, d=6, dtype=torch.float64):
    return [torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("s", [4, 5, 32])
def test_matches_reference_with_gradients(s, causal, padded):
    attn = HierarchicalAttention(segment_size=s, causal=causal)
    q, k, v = _qkv()
    kpm = None
    if padded:  # a whole segment of batch 0 padded, plus a ragged tail in batch 1
        kpm = torch.zeros(2, 19, dtype=torch.bool)
        kpm[0, 4:8] = True
        kpm[1, 15:] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    ref = hierarchical_reference(q, k, v, s, causal, kpm)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)


def test_fp32_and_value_dim():
    attn = HierarchicalAttention(segment_size=4)
    q, k = (torch.randn(1, 2, 13, 6) for _ in range(2))
    v = torch.randn(1, 2, 13, 3)
    out = attn(q, k, v)
    assert out.shape == (1, 2, 13, 3) and out.dtype == torch.float32
    ref = hierarchical_reference(q.double(), k.double(), v.double(), 4, False)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-4)


def test_causal_does_not_leak_the_future():
    attn = HierarchicalAttention(segment_size=4, causal=True)
    q, k, v = (t.detach() for t in _qkv(n=22))
    for t in (5, 7, 8):  # mid-segment, last of a segment, first of a segment
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t + 1:] = torch.randn_like(x[:, :, t + 1:]) * 3
        out, out2 = attn(q, k, v), attn(q2, k2, v2)
        torch.testing.assert_close(out[:, :, : t + 1], out2[:, :, : t + 1], atol=1e-12, rtol=0)
        assert not torch.allclose(out[:, :, t + 1:], out2[:, :, t + 1:])


def test_distant_tokens_interact():
    """Level 2 connects segments: the first output depends on the last value (not so when causal)."""
    q, k, v = _qkv(n=32)
    for causal, expect in ((False, True), (True, False)):
        out = HierarchicalAttention(segment_size=4, causal=causal)(q, k, v)
        (gv,) = torch.autograd.grad(out[:, :, 0].sum(), v)
        assert (gv[:, :, -1].abs().sum() > 0) == expect
    out = HierarchicalAttention(segment_size=4, causal=True)(q, k, v)  # but the last sees the first
    (gv,) = torch.autograd.grad(out[:, :, -1].sum(), v)
    assert gv[:, :, 0].abs().sum() > 0


def test_padded_tokens_have_no_effect():
    attn = HierarchicalAttention(segment_size=4)
    q, k, v = (t.detach() for t in _qkv(n=19))
    kpm = torch.zeros(2, 19, dtype=torch.bool)
    kpm[0, [1, 2, 17]] = True
    kpm[1, 12:16] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    sel = kpm[:, None, :].expand(-1, 2, -1)
    for x in (q, k, v):
        x[sel] = torch.randn(int(sel.sum()), 6, dtype=x.dtype) * 10
    out2 = attn(q, k, v, key_padding_mask=kpm)
    real = ~sel
    torch.testing.assert_close(out[real], out2[real], atol=1e-12, rtol=0)


def test_one_segment_is_dense_plus_mean_value():
    """segment_size >= N: level 1 is full attention, level 2 one summary that sees itself (its mean v)."""
    q, k, v = _qkv(n=10)
    out = HierarchicalAttention(segment_size=16)(q, k, v)
    ref = core_attn.reference_attention(q, k, v).double() + v.mean(2, keepdim=True)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_bf16_autocast():
    attn = HierarchicalAttention(segment_size=4)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), attn(q, k, v), atol=5e-2, rtol=5e-2)


def test_registered_and_errors():
    attn = core_attn.build_attention("hierarchical", segment_size=8, causal=True)
    assert isinstance(attn, HierarchicalAttention) and attn.exact is False
    assert "segment_size=8" in repr(attn)
    with pytest.raises(ValueError, match=r"segment_size=0 is out of range; expected 1 <= segment_size"):
        HierarchicalAttention(segment_size=0)
    with pytest.raises(ValueError, match=r"segment_size=2.5 must be an integer"):
        HierarchicalAttention(segment_size=2.5)
    with pytest.raises(ValueError, match=r"causal='yes' must be a bool"):
        HierarchicalAttention(causal="yes")
    with pytest.raises(ValueError, match=r"this variant is self-attention: q has N=5 but k has N=6"):
        HierarchicalAttention()(torch.randn(1, 1, 5, 4), torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4))
