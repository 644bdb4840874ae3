"""Perceiver attention (learned latents) against the plain math, incl. gradients to the latents."""

import math

import pytest
import torch

import core_attn
from core_attn.attention.perceiver import PerceiverAttention


def _softmax_attend(a, b, c, hidden=None):
    """softmax(a b^T / sqrt(D)) c; hidden (B, Nk) True = key ignored; a row that sees nothing -> 0."""
    s = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])
    if hidden is not None:
        s = s.masked_fill(hidden[:, None, None, :], float("-inf"))
        if hidden.all(-1).any():
            p = torch.softmax(s.masked_fill(hidden[:, None, None, :].all(-1, keepdim=True), 0.0), -1)
            p = p * ~hidden[:, None, None, :]
            return p @ c
    return torch.softmax(s, -1) @ c


def perceiver_reference(latents, q, k, v, latent_layers, kpm=None):
    z = latents.expand(q.shape[0], -1, -1, -1).to(q.dtype)  # (B, H, M, D)
    z = z + _softmax_attend(z, k, v, kpm)
    for _ in range(latent_layers):
        z = z + _softmax_attend(z, z, z)
    return _softmax_attend(q, z, z)


def _qkv(b=2, h=2, nq=21, nk=21, d=8, dtype=torch.float64):
    q = torch.randn(b, h, nq, d, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(b, h, nk, d, dtype=dtype, requires_grad=True) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("latent_layers", [0, 2])
@pytest.mark.parametrize("nq,nk,m", [(21, 21, 5), (9, 300, 3), (150, 7, 130)])
def test_matches_reference_with_gradients(nq, nk, m, latent_layers, padded):
    attn = PerceiverAttention(num_heads=2, head_dim=8, num_latents=m, latent_layers=latent_layers).double()
    q, k, v = _qkv(nq=nq, nk=nk)
    kpm = None
    if padded:
        kpm = torch.zeros(2, nk, dtype=torch.bool)
        kpm[1, nk // 2:] = True
        kpm[0, 0] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    ref = perceiver_reference(attn.latents, q, k, v, latent_layers, kpm)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(out)
    inputs = (q, k, v, attn.latents)
    grads = torch.autograd.grad(out, inputs, g)
    for a, r in zip(grads, torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)
    assert grads[-1].abs().sum() > 0  # the latents learn


def test_fp32_latents_get_gradients_through_a_training_step():
    attn = PerceiverAttention(num_heads=2, head_dim=8, num_latents=4)
    q, k, v = (torch.randn(3, 2, 17, 8) for _ in range(3))
    out = attn(q, k, v)
    assert out.shape == (3, 2, 17, 8) and out.dtype == torch.float32
    ref = perceiver_reference(attn.latents.double(), q.double(), k.double(), v.double(), 1)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-4)
    out.square().mean().backward()
    assert attn.latents.grad is not None and attn.latents.grad.abs().sum() > 0
    assert [n for n, _ in attn.named_parameters()] == ["latents"]


def test_padded_keys_have_no_effect():
    attn = PerceiverAttention(num_heads=2, head_dim=8, num_latents=4).double()
    q, k, v = (t.detach() for t in _qkv(nk=15))
    kpm = torch.zeros(2, 15, dtype=torch.bool)
    kpm[0, [2, 3, 14]] = True
    kpm[1, 9:] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    sel = kpm[:, None, :].expand(-1, 2, -1)
    k[sel], v[sel] = (torch.randn(int(sel.sum()), 8, dtype=torch.float64) * 10 for _ in range(2))
    torch.testing.assert_close(attn(q, k, v, key_padding_mask=kpm), out, atol=1e-12, rtol=0)
    keep = ~kpm[1]  # and equals dropping them
    short = attn(q[1:], k[1:, :, keep], v[1:, :, keep])
    torch.testing.assert_close(out[1:], short, atol=1e-12, rtol=0)


def test_all_keys_padded_leaves_the_latents():
    attn = PerceiverAttention(num_heads=2, head_dim=8, num_latents=4, latent_layers=0).double()
    q, k, v = _qkv(b=1, nk=6)
    out = attn(q, k, v, key_padding_mask=torch.ones(1, 6, dtype=torch.bool))
    z = attn.latents[None]
    torch.testing.assert_close(out, _softmax_attend(q, z, z), atol=1e-12, rtol=0)
    (gk,) = torch.autograd.grad(out.sum(), k)
    assert torch.isfinite(gk).all() and gk.abs().sum() == 0


def test_bf16_autocast():
    attn = PerceiverAttention(num_heads=2, head_dim=8, num_latents=4)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), attn(q, k, v), atol=8e-2, rtol=5e-2)


def test_registered():
    attn = core_attn.build_attention("perceiver", num_heads=2, head_dim=8, num_latents=8)
    assert isinstance(attn, PerceiverAttention) and attn.exact is False
    assert attn.latents.shape == (2, 8, 8)
    assert "num_latents=8" in repr(attn)


def test_errors():
    with pytest.raises(ValueError, match=r"causal=True is not supported by perceiver: every latent reads every input"):
        PerceiverAttention(num_heads=2, head_dim=8, causal=True)
    with pytest.raises(ValueError, match=r"num_latents=0 is out of range; expected 1 <= num_latents"):
        PerceiverAttention(num_heads=2, head_dim=8, num_latents=0)
    with pytest.raises(ValueError, match=r"latent_layers=-1 is out of range; expected 0 <= latent_layers"):
        PerceiverAttention(num_heads=2, head_dim=8, latent_layers=-1)
    with pytest.raises(ValueError, match=r"num_heads=0 is out of range; expected 1 <= num_heads"):
        PerceiverAttention(num_heads=0, head_dim=8)
    with pytest.raises(ValueError, match=r"head_dim=8.0 must be an integer"):
        PerceiverAttention(num_heads=2, head_dim=8.0)
    with pytest.raises(ValueError, match=r"causal='no' must be a bool"):
        PerceiverAttention(num_heads=2, head_dim=8, causal="no")
    attn = PerceiverAttention(num_heads=2, head_dim=8, num_latents=4)
    x = torch.randn(1, 3, 5, 8)
    with pytest.raises(ValueError, match=r"q, k, v have H=3 heads but num_heads=2 sized the latents"):
        attn(x, x, x)
    x, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match=r"head_dim=8 sized the latents but q has D=8, k has D=8, v has D=4"):
        attn(x, x, v)
    x = torch.randn(1, 2, 5, 6)
    with pytest.raises(ValueError, match=r"head_dim=8 sized the latents but q has D=6, k has D=6, v has D=6"):
        attn(x, x, x)
