"""LinformerAttention (Wang et al. 2020) against plain math."""

import math

import pytest
import torch

import core_attn
from core_attn.attention.linformer import LinformerAttention
from core_attn.reference import reference_attention


def plain_linformer(q, k, v, e, f, key_padding_mask=None):
    """softmax(Q (E[:, :N] K)^T / sqrt(d)) (F[:, :N] V) with padding rows of K, V zeroed."""
    n = k.shape[2]
    if key_padding_mask is not None:
        keep = (~key_padding_mask).to(k.dtype)[:, None, :, None]
        k, v = k * keep, v * keep
    kp = torch.einsum("rn,bhnd->bhrd", e[:, :n], k)
    vp = torch.einsum("rn,bhnd->bhrd", f[:, :n], v)
    p = torch.softmax(q @ kp.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
    return p @ vp


def _qkv(b=2, h=2, nq=13, nk=13, d=8, dtype=torch.float64):
    return tuple(torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for n in (nq, nk, nk))


@pytest.mark.parametrize("share_kv", [False, True], ids=["separate", "shared"])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
def test_matches_plain_math_with_gradients(padded, share_kv):
    attn = LinformerAttention(max_seq_len=20, k=6, share_kv=share_kv).double()
    q, k, v = _qkv()  # N = 13 < max_seq_len: the first 13 columns of E and F
    kpm = None
    if padded:
        kpm = torch.zeros(2, 13, dtype=torch.bool)
        kpm[0, 9:] = True
        kpm[1, :2] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    e = attn.proj_k
    f = e if share_kv else attn.proj_v
    ref = plain_linformer(q, k, v, e, f, kpm)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    params = [attn.proj_k] + ([] if share_kv else [attn.proj_v])
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, *params), g)
    want = torch.autograd.grad(ref, (q, k, v, *params), g)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)
    assert got[-1][:, 13:].abs().max() == 0  # unused columns get no gradient


def test_cross_attention_matches_plain_math():
    attn = LinformerAttention(max_seq_len=16, k=4).double()
    q, k, v = _qkv(nq=5, nk=16)
    torch.testing.assert_close(attn(q, k, v), plain_linformer(q, k, v, attn.proj_k, attn.proj_v),
                               atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("share_kv", [False, True], ids=["separate", "shared"])
def test_identity_projections_give_dense_attention(share_kv):
    n = 12
    attn = LinformerAttention(max_seq_len=n, k=n, share_kv=share_kv).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.eye(n))
    q, k, v = _qkv(nq=n, nk=n)
    torch.testing.assert_close(attn(q, k, v), reference_attention(q, k, v).double(), atol=1e-6, rtol=1e-5)
    # fp64 all the way (reference_attention computes in fp32): agreement to rounding
    dense = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
    torch.testing.assert_close(attn(q, k, v), dense, atol=1e-13, rtol=1e-12)


def test_padded_keys_contribute_nothing():
    attn = LinformerAttention(max_seq_len=16, k=4)
    q, k, v = (torch.randn(2, 2, 10, 8) for _ in range(3))
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[:, 7:] = True
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 7:], v2[:, :, 7:] = 1e3, -1e3
    torch.testing.assert_close(attn(q, k, v, kpm), attn(q, k2, v2, kpm))


def test_parameters_and_initialisation():
    attn = LinformerAttention(max_seq_len=300, k=50)
    assert attn.proj_k.shape == attn.proj_v.shape == (50, 300)
    bound = math.sqrt(3 / (50 + 300))  # xavier_uniform with gain 1/sqrt(2): sqrt(6 / (k + L)) / sqrt(2)
    for p in (attn.proj_k, attn.proj_v):
        assert p.abs().max() <= bound and p.abs().max() > 0.95 * bound
        assert abs(p.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert not torch.equal(attn.proj_k, attn.proj_v)
    shared = LinformerAttention(max_seq_len=300, k=50, share_kv=True)
    assert shared.proj_v is None and [n for n, _ in shared.named_parameters()] == ["proj_k"]


def test_bf16_autocast_close_to_fp32():
    attn = LinformerAttention(max_seq_len=64, k=16)
    q, k, v = (torch.randn(2, 2, 48, 16, requires_grad=True) for _ in range(3))
    ref = attn(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32
    assert attn.proj_k.grad is not None and attn.proj_k.grad.dtype == torch.float32


def test_no_quadratic_tensor_is_saved():
    n = 256
    attn = LinformerAttention(max_seq_len=n, k=16)
    q, k, v = (torch.randn(1, 1, n, 8, requires_grad=True) for _ in range(3))
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        attn(q, k, v)
    assert sizes and max(sizes) < n * n // 4, max(sizes)


def test_registry_builds_it():
    attn = core_attn.build_attention("linformer", max_seq_len=32, k=8)
    assert isinstance(attn, LinformerAttention) and not attn.exact


def test_errors_name_the_parameter():
    attn = LinformerAttention(max_seq_len=16, k=4)
    q = torch.randn(1, 1, 17, 8)
    with pytest.raises(ValueError, match=r"key sequence length N=17 exceeds max_seq_len=16; build LinformerAttention "
                                         r"with max_seq_len >= 17"):
        attn(q, q, q)
    with pytest.raises(ValueError, match=r"causal=True is not supported by linformer: its projections E, F mix every "
                                         r"position.*future positions included"):
        LinformerAttention(max_seq_len=16, causal=True)
    with pytest.raises(ValueError, match=r"k=0 is out of range; expected 1 <= k"):
        LinformerAttention(max_seq_len=16, k=0)
    with pytest.raises(ValueError, match=r"max_seq_len=0 is out of range; expected 1 <= max_seq_len"):
        LinformerAttention(max_seq_len=0)
    with pytest.raises(ValueError, match=r"max_seq_len=None must be an integer"):
        LinformerAttention(max_seq_len=None)
    with pytest.raises(ValueError, match=r"share_kv=1 must be a bool"):
        LinformerAttention(max_seq_len=16, share_kv=1)
    with pytest.raises(ValueError, match=r"attention 'linformer' got unknown hyper-parameter 'seq_len'.*"
                                         r"Did you mean 'max_seq_len'\?"):
        core_attn.build_attention("linformer", seq_len=16)
