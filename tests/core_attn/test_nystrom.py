"""NystromAttention (Xiong et al. 2021) against plain math and dense attention."""

import math

import pytest
import torch

import core_attn
from core_attn.attention.nystrom import NystromAttention, iterative_pinv, segment_means
from core_attn.reference import reference_attention


def plain_nystrom_one(q, k, v, m, pinv, iterations=6):
    """One unpadded sequence, (H, L, D) each, written out segment by segment (empty segments dropped)."""
    length, d = q.shape[1], q.shape[2]
    segs = [[r for r in range(length) if r * m // length == s] for s in range(m)]
    segs = [s for s in segs if s]
    ql = torch.stack([q[:, s].mean(1) for s in segs], 1)  # (H, m', D)
    kl = torch.stack([k[:, s].mean(1) for s in segs], 1)
    sm = lambda a, b: torch.softmax(a @ b.transpose(-1, -2) / math.sqrt(d), -1)  # noqa: E731
    inv = torch.linalg.pinv(sm(ql, kl)) if pinv == "exact" else iterative_pinv(sm(ql, kl), iterations)
    return sm(q, kl) @ (inv @ (sm(ql, k) @ v))


def plain_nystrom(q, k, v, m, pinv, key_padding_mask=None):
    """Batch of sequences: drop each one's padding, run the plain math; padded query rows are left at 0."""
    out = torch.zeros_like(q[..., :1].expand(*q.shape[:-1], v.shape[-1]))
    for b in range(q.shape[0]):
        idx = torch.arange(q.shape[2]) if key_padding_mask is None else (~key_padding_mask[b]).nonzero()[:, 0]
        out[b, :, idx] = plain_nystrom_one(q[b, :, idx], k[b, :, idx], v[b, :, idx], m, pinv)
    return out


def _qkv(b=2, h=2, n=12, d=8, dtype=torch.float64):
    return tuple(torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3))


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("n", [8, 13])
def test_all_landmarks_and_exact_pinv_recover_dense_attention(n, padded):
    q, k, v = _qkv(n=n)
    kpm = None
    if padded:
        kpm = torch.zeros(2, n, dtype=torch.bool)
        kpm[0, n - 3:] = True  # fewer valid tokens than landmarks: empty landmarks are masked
    attn = NystromAttention(num_landmarks=n, pinv="exact")
    out = attn(q, k, v, key_padding_mask=kpm)
    ref = reference_attention(q, k, v, key_padding_mask=kpm)  # fp32 math
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    s = (q @ k.transpose(-1, -2) / math.sqrt(8))
    if kpm is not None:
        s = s.masked_fill(kpm[:, None, None, :], float("-inf"))
    dense = torch.softmax(s, -1) @ v  # fp64 dense attention: equal to rounding, gradients too
    torch.testing.assert_close(out, dense, atol=1e-9, rtol=1e-7)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(dense, (q, k, v), g)):
        torch.testing.assert_close(a, r, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("pinv", ["iterative", "exact"])
@pytest.mark.parametrize("n,m,padded", [(16, 4, False), (14, 4, False), (14, 4, True), (9, 6, True)],
                         ids=["divisible", "uneven", "uneven-pad", "fewer-tokens-than-landmarks"])
def test_matches_plain_math_with_gradients(n, m, padded, pinv):
    q, k, v = _qkv(n=n)
    kpm = None
    if padded:
        kpm = torch.zeros(2, n, dtype=torch.bool)
        kpm[0, n - 5:] = True
        kpm[1, 1:3] = True  # padding inside the sequence too
    out = NystromAttention(num_landmarks=m, pinv=pinv)(q, k, v, key_padding_mask=kpm)
    ref = plain_nystrom(q, k, v, m, pinv, kpm)
    keep = torch.ones(2, n, dtype=torch.bool) if kpm is None else ~kpm
    keep = keep[:, None, :, None]
    out, ref = out * keep, ref * keep  # padded query rows are not specified
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, r, atol=1e-8, rtol=1e-6)


def test_segments_are_the_papers_when_m_divides_n():
    x = torch.randn(2, 3, 12, 4)
    means, nonempty = segment_means(x, torch.ones(2, 12, dtype=torch.bool), 4)
    torch.testing.assert_close(means, x.reshape(2, 3, 4, 3, 4).mean(-2))
    assert nonempty.all()
    valid = torch.ones(1, 14, dtype=torch.bool)
    _, sizes = torch.unique_consecutive(torch.arange(14) * 4 // 14, return_counts=True)
    assert sizes.tolist() == [4, 3, 4, 3]  # uneven N: sizes differ by at most one
    means, _ = segment_means(x[:1, :, :1].expand(1, 3, 14, 4).contiguous(), valid, 4)
    torch.testing.assert_close(means, x[:1, :, :1].expand(1, 3, 4, 4))


def test_iterative_pinv_converges_to_exact():
    q, k, _ = _qkv(b=1, n=16)
    kl = segment_means(k, torch.ones(1, 16, dtype=torch.bool), 8)[0]
    ql = segment_means(q, torch.ones(1, 16, dtype=torch.bool), 8)[0]
    mat = torch.softmax(ql @ kl.transpose(-1, -2) / math.sqrt(8), -1).detach()  # (1, 2, 8, 8)
    exact = torch.linalg.pinv(mat)
    # In the Frobenius norm every singular value of A Z_j moves monotonically to 1 (1 - x -> (1 - x)^3 (4 - x) / 4),
    # so the error falls at every step; entrywise it need not for an ill-conditioned A like this one.
    errors = [torch.linalg.matrix_norm(iterative_pinv(mat, it) - exact).max().item() for it in (1, 2, 4, 8, 16, 32)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-7 * torch.linalg.matrix_norm(exact).max().item(), errors
    # and the attention output follows; q = k makes the landmark matrix well conditioned, so the paper's
    # default of 6 iterations is nearly exact (for the matrix above 6 are far from enough)
    x, v = (torch.randn(2, 2, 16, 8, dtype=torch.float64) for _ in range(2))
    dense = NystromAttention(num_landmarks=8, pinv="exact")(1.5 * x, 1.5 * x, v)
    out_err = [(NystromAttention(num_landmarks=8, pinv_iterations=it)(1.5 * x, 1.5 * x, v) - dense).norm().item()
               for it in (1, 2, 4, 6, 12)]
    assert all(a > b for a, b in zip(out_err[:-1], out_err[1:-1])), out_err
    assert out_err[3] < 0.05 and out_err[-1] < 1e-9, out_err


@pytest.mark.parametrize("conv_kernel", [None, 3], ids=["noconv", "conv"])
def test_padded_element_equals_unpadded(conv_kernel):
    n, length = 20, 13
    q, k, v = (torch.randn(2, 2, n, 8) for _ in range(3))
    kpm = torch.zeros(2, n, dtype=torch.bool)
    kpm[1, length:] = True
    attn = NystromAttention(num_landmarks=4, conv_kernel=conv_kernel, num_heads=2)
    out = attn(q, k, v, key_padding_mask=kpm)
    alone = attn(q[1:, :, :length], k[1:, :, :length], v[1:, :, :length])
    torch.testing.assert_close(out[1, :, :length], alone[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[:1], attn(q[:1], k[:1], v[:1]), atol=1e-6, rtol=1e-5)  # no cross-batch effect
    k2, v2 = k.clone(), v.clone()
    k2[1, :, length:], v2[1, :, length:] = 1e3, -1e3  # padded keys/values are never read
    torch.testing.assert_close(attn(q, k2, v2, key_padding_mask=kpm), out)


def test_conv_residual_is_a_depthwise_sequence_convolution():
    q, k, v = _qkv(b=1, h=2, n=10)
    with_conv = NystromAttention(num_landmarks=5, conv_kernel=3, num_heads=2).double()
    without = NystromAttention(num_landmarks=5)
    w = with_conv.conv.weight  # (H, 1, 3, 1)
    vp = torch.nn.functional.pad(v, (0, 0, 1, 1))  # zero padding along the sequence
    conv = sum(w[None, :, 0, t, 0, None, None] * vp[:, :, t:t + 10] for t in range(3))
    torch.testing.assert_close(with_conv(q, k, v) - without(q, k, v), conv, atol=1e-12, rtol=1e-10)
    (gw,) = torch.autograd.grad(with_conv(q, k, v).sum(), w)
    assert gw.abs().min() > 0


def test_gradients_flow_and_fully_padded_rows_are_zero():
    q, k, v = _qkv(n=12, dtype=torch.float32)
    kpm = torch.zeros(2, 12, dtype=torch.bool)
    kpm[0] = True  # nothing to attend to: zeros, like reference_attention, and finite gradients
    for pinv in ("iterative", "exact"):
        out = NystromAttention(num_landmarks=4, pinv=pinv)(q, k, v, key_padding_mask=kpm)
        assert out[0].abs().max() == 0
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        for g in grads:
            assert torch.isfinite(g).all() and g[1].abs().max() > 0


def test_bf16_autocast_close_to_fp32():
    attn = NystromAttention(num_landmarks=8)
    q, k, v = (torch.randn(2, 2, 48, 16, requires_grad=True) for _ in range(3))
    ref = attn(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()


def test_no_quadratic_tensor_is_saved():
    n = 256
    attn = NystromAttention(num_landmarks=8, conv_kernel=3, num_heads=1)
    q, k, v = (torch.randn(1, 1, n, 8, requires_grad=True) for _ in range(3))
    kpm = torch.zeros(1, n, dtype=torch.bool)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        attn(q, k, v, key_padding_mask=kpm)
    assert sizes and max(sizes) < n * n // 4, max(sizes)


def test_registry_builds_it():
    attn = core_attn.build_attention("nystrom", num_landmarks=8)
    assert isinstance(attn, NystromAttention) and not attn.exact


def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"causal=True is not supported by nystrom: each landmark is the mean of a "
                                         r"segment.*future positions included"):
        NystromAttention(causal=True)
    with pytest.raises(ValueError, match=r"pinv='exakt' is not allowed; expected one of \['iterative', 'exact'\]\. "
                                         r"Did you mean 'exact'\?"):
        NystromAttention(pinv="exakt")
    with pytest.raises(ValueError, match=r"num_landmarks=0 is out of range; expected 1 <= num_landmarks"):
        NystromAttention(num_landmarks=0)
    with pytest.raises(ValueError, match=r"pinv_iterations=0 is out of range; expected 1 <= pinv_iterations"):
        NystromAttention(pinv_iterations=0)
    with pytest.raises(ValueError, match=r"conv_kernel=4 must be odd"):
        NystromAttention(conv_kernel=4, num_heads=2)
    with pytest.raises(ValueError, match=r"conv_kernel=3 needs num_heads \(one depthwise filter per head\); "
                                         r"got num_heads=None"):
        NystromAttention(conv_kernel=3)
    with pytest.raises(ValueError, match=r"num_heads=0 is out of range; expected 1 <= num_heads"):
        NystromAttention(num_heads=0)
    q = torch.randn(1, 3, 8, 4)
    with pytest.raises(ValueError, match=r"the input has H=3 heads but num_heads=2"):
        NystromAttention(conv_kernel=3, num_heads=2)(q, q, q)
    with pytest.raises(ValueError, match=r"this variant is self-attention: q has N=8 but k has N=5"):
        NystromAttention()(q, q[:, :, :5], q[:, :, :5])
    with pytest.raises(ValueError, match=r"attention 'nystrom' got unknown hyper-parameter 'landmarks'.*"
                                         r"Did you mean 'num_landmarks'\?"):
        core_attn.build_attention("nystrom", landmarks=8)
