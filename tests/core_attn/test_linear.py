"""LinearAttention (Katharopoulos et al. 2020; FAVOR+, Choromanski et al. 2021) against plain math."""

import math

import pytest
import torch
import torch.nn.functional as F

import core_attn
from core_attn.attention.linear import LinearAttention, orthogonal_random_features
from core_attn.reference import reference_attention

MAPS = ["elu", "favor"]


def plain_linear_attention(attn, q, k, v, key_padding_mask=None, causal=False):
    """The readable O(N^2) form: materialise phi(Q) phi(K)^T, mask, normalise (no stabilisers)."""
    if attn.feature_map == "elu":
        pq, pk = F.elu(q) + 1, F.elu(k) + 1
    else:
        w = attn.projection.to(q.dtype)
        m, d = w.shape

        def phi(x):
            x = x * d ** -0.25
            return torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(m)

        pq, pk = phi(q), phi(k)
    a = pq @ pk.transpose(-1, -2)  # (B, H, Nq, Nk)
    if causal:
        a = a * torch.ones(a.shape[-2:], dtype=torch.bool).tril()
    if key_padding_mask is not None:
        a = a * ~key_padding_mask[:, None, None, :]
    return (a @ v) / a.sum(-1, keepdim=True).clamp_min(1e-12)


def _qkv(b=2, h=2, n=37, d=8, scale=0.6, dtype=torch.float64, nk=None):
    nk = n if nk is None else nk
    q = (torch.randn(b, h, n, d, dtype=dtype) * scale).requires_grad_()
    k = (torch.randn(b, h, nk, d, dtype=dtype) * scale).requires_grad_()
    v = torch.randn(b, h, nk, d, dtype=dtype).requires_grad_()
    return q, k, v


def _padding(b, n):
    kpm = torch.zeros(b, n, dtype=torch.bool)
    kpm[0, n - n // 4:] = True  # tail padding
    kpm[-1, : n // 3] = True  # head padding (causal: the first queries see no key)
    return kpm


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("feature_map", MAPS)
def test_matches_plain_math_with_gradients(feature_map, causal, padded):
    attn = LinearAttention(feature_map=feature_map, num_features=24, causal=causal, chunk_size=8)
    q, k, v = _qkv()
    kpm = _padding(2, 37) if padded else None
    out = attn(q, k, v, key_padding_mask=kpm)
    ref = plain_linear_attention(attn, q, k, v, kpm, causal)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-8)
    if padded and causal:  # queries before the first valid key see nothing: zeros, like reference_attention
        assert out[-1, :, : 37 // 3].abs().max() == 0


@pytest.mark.parametrize("feature_map", MAPS)
def test_cross_attention_matches_plain_math(feature_map):
    attn = LinearAttention(feature_map=feature_map, num_features=16)
    q, k, v = _qkv(n=5, nk=11)
    torch.testing.assert_close(attn(q, k, v), plain_linear_attention(attn, q, k, v), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("feature_map", MAPS)
def test_causal_chunk_size_does_not_change_the_result(feature_map):
    q, k, v = _qkv(n=29)
    outs = [LinearAttention(feature_map=feature_map, num_features=16, causal=True, chunk_size=c)(q, k, v)
            for c in (1, 4, 7, 29, 64)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("feature_map", MAPS)
def test_causal_does_not_leak_the_future(feature_map):
    attn = LinearAttention(feature_map=feature_map, num_features=32, causal=True, chunk_size=8)
    q, k, v = (torch.randn(2, 2, 40, 16) for _ in range(3))
    out = attn(q, k, v)
    t = 19  # mid-chunk: positions 16..19 share a chunk with the perturbed 20..23
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[:, :, t + 1:] = torch.randn_like(x[:, :, t + 1:]) * 5
    if feature_map == "favor":  # a future key on a random feature: the largest logit the stabiliser can see
        k2[:, :, 30] = attn.projection[0] * 16 ** 0.25
    out2 = attn(q2, k2, v2)
    assert torch.equal(out[:, :, : t + 1], out2[:, :, : t + 1])  # bit-identical: not even rounding leaks
    assert not torch.allclose(out[:, :, t + 1:], out2[:, :, t + 1:])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_padded_keys_contribute_nothing(causal):
    attn = LinearAttention(feature_map="favor", num_features=16, causal=causal, chunk_size=4)
    q, k, v = (torch.randn(2, 1, 12, 8) for _ in range(3))
    kpm = torch.zeros(2, 12, dtype=torch.bool)
    kpm[:, 3:6] = True
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 3:6] = torch.randn(2, 1, 3, 8) * 10
    v2[:, :, 3:6] = 1e3
    torch.testing.assert_close(attn(q, k, v, kpm), attn(q, k2, v2, kpm))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_favor_stabiliser_handles_large_norms(causal):
    """Keys of norm ~40x typical underflow without a stabiliser; fp32 stays finite and matches fp64."""
    attn = LinearAttention(feature_map="favor", num_features=32, causal=causal, chunk_size=4)
    q, k, v = (torch.randn(1, 2, 24, 16, dtype=torch.float64) for _ in range(3))
    k[:, :, :8] *= 40  # the first chunks: huge keys, then ordinary ones
    k.requires_grad_()
    out64 = attn(q, k, v)
    out32 = attn(q.float(), k.float(), v.float())
    assert torch.isfinite(out32).all()
    torch.testing.assert_close(out32.double(), out64, atol=1e-4, rtol=1e-4)
    (gk,) = torch.autograd.grad(out64.sum(), k)
    assert torch.isfinite(gk).all()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_favor_approaches_softmax_as_features_grow(causal):
    """FAVOR+ is an unbiased softmax-kernel estimator: the error to exact attention falls with m."""
    q, k, v = (torch.randn(2, 2, 48, 16) * s for s in (0.5, 0.5, 1.0))  # moderate norms: low variance
    exact = reference_attention(q, k, v, causal=causal)
    errors = []
    for m in (16, 256, 2048):  # averaged over 3 seeds; observed 1.7x to 3.7x smaller per step
        errs = [((LinearAttention(feature_map="favor", num_features=m, seed=s, causal=causal)(q, k, v) - exact)
                 .norm() / exact.norm()).item() for s in range(3)]
        errors.append(sum(errs) / len(errs))
    assert errors[0] > 1.4 * errors[1] and errors[1] > 1.4 * errors[2], errors
    assert errors[2] < 0.1, errors


def test_favor_features_are_orthogonal_blocks_and_seeded():
    gen = torch.Generator().manual_seed(3)
    w = orthogonal_random_features(20, 8, gen).double()  # blocks of 8, 8, 4 rows
    for lo, hi in ((0, 8), (8, 16), (16, 20)):
        gram = w[lo:hi] @ w[lo:hi].T
        torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), atol=1e-5, rtol=0)
    assert not torch.allclose(w[:8].norm(dim=1), w[8:16].norm(dim=1))  # chi-distributed row norms
    again = orthogonal_random_features(20, 8, torch.Generator().manual_seed(3))
    assert torch.equal(w.float(), again)


def test_deterministic_across_calls_modes_and_instances():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    a = LinearAttention(feature_map="favor", num_features=16, seed=5)
    a.train()
    o1 = a(q, k, v)
    feats = a.projection.clone()
    assert torch.equal(o1, a(q, k, v))
    a.eval()
    assert torch.equal(o1, a(q, k, v))
    assert torch.equal(feats, a.projection)
    assert torch.equal(o1, LinearAttention(feature_map="favor", num_features=16, seed=5)(q, k, v))
    assert not torch.allclose(o1, LinearAttention(feature_map="favor", num_features=16, seed=6)(q, k, v))


def test_redraw_draws_new_features_deterministically():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    a, b = (LinearAttention(feature_map="favor", num_features=16) for _ in range(2))
    o = a(q, k, v)
    first = a.projection.clone()
    a.redraw()
    assert not torch.allclose(first, a.projection)
    assert not torch.allclose(o, a(q, k, v))
    b.redraw()  # before the head dim is known: the next forward draws the second draw
    b(q, k, v)
    assert torch.equal(a.projection, b.projection)
    e = LinearAttention(feature_map="elu")
    e.redraw()  # nothing random: a no-op
    assert e.projection is None


def test_state_dict_round_trip_keeps_features():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    a = LinearAttention(feature_map="favor", num_features=16, seed=2)
    a.redraw()
    out = a(q, k, v)
    fresh = LinearAttention(feature_map="favor", num_features=16, seed=9)
    fresh.load_state_dict(a.state_dict())
    assert torch.equal(out, fresh(q, k, v))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("feature_map", MAPS)
def test_bf16_autocast_close_to_fp32(feature_map, causal):
    attn = LinearAttention(feature_map=feature_map, num_features=64, causal=causal, chunk_size=16)
    q, k, v = (torch.randn(2, 2, 48, 16) * 0.5 for _ in range(3))
    q.requires_grad_()
    ref = attn(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_no_quadratic_tensor_is_saved(causal):
    """Nothing kept for the backward pass grows like N^2 (B = H = 1, m and C much smaller than N)."""
    n = 256
    attn = LinearAttention(feature_map="favor", num_features=16, causal=causal, chunk_size=16)
    q, k, v = (torch.randn(1, 1, n, 8, requires_grad=True) for _ in range(3))
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        attn(q, k, v)
    assert sizes and max(sizes) < n * n // 4, max(sizes)


def test_registry_builds_it():
    attn = core_attn.build_attention("linear", feature_map="favor", num_features=8)
    assert isinstance(attn, LinearAttention) and not attn.exact
    assert "m" in attn.time_complexity and "N" in attn.memory_complexity


def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"feature_map='favour' is not allowed; expected one of \['elu', 'favor'\]\. "
                                         r"Did you mean 'favor'\?"):
        LinearAttention(feature_map="favour")
    with pytest.raises(ValueError, match=r"num_features=0 is out of range; expected 1 <= num_features"):
        LinearAttention(num_features=0)
    with pytest.raises(ValueError, match=r"chunk_size=0 is out of range; expected 1 <= chunk_size"):
        LinearAttention(chunk_size=0)
    with pytest.raises(ValueError, match=r"seed=-1 is out of range; expected 0 <= seed"):
        LinearAttention(seed=-1)
    with pytest.raises(ValueError, match=r"eps=0.0 must be > 0"):
        LinearAttention(eps=0.0)
    with pytest.raises(ValueError, match=r"eps=-1 is out of range; expected 0.0 <= eps"):
        LinearAttention(eps=-1)
    with pytest.raises(ValueError, match=r"causal='yes' must be a bool"):
        LinearAttention(causal="yes")
    with pytest.raises(ValueError, match=r"attention 'linear' got unknown hyper-parameter 'num_feature'.*"
                                         r"Did you mean 'num_features'\?"):
        core_attn.build_attention("linear", num_feature=8)


def test_runtime_errors():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match=r"this variant is self-attention: q has N=8 but k has N=5"):
        LinearAttention(causal=True)(q, q[:, :, :5], q[:, :, :5])
    a = LinearAttention(feature_map="favor", num_features=8)
    a(q, q, q)
    with pytest.raises(ValueError, match=r"favor random features were drawn for head dim D=4; got D=6"):
        a(torch.randn(1, 1, 8, 6), torch.randn(1, 1, 8, 6), torch.randn(1, 1, 8, 6))


def test_features_first_drawn_under_inference_mode_still_train():
    """Lightning's sanity check runs validation under inference_mode before the first training step."""
    attn = LinearAttention(feature_map="favor", num_features=8)
    q, k, v = (torch.randn(1, 1, 6, 4) for _ in range(3))
    with torch.inference_mode():
        expected = attn(q, k, v)
    q.requires_grad_()
    out = attn(q, k, v)
    out.sum().backward()
    assert not attn.projection.is_inference() and q.grad is not None
    torch.testing.assert_close(out.detach(), expected)
