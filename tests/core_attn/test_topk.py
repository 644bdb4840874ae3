"""topk against its dense reference (outputs and gradients), its memory bound and its errors."""

import functools
import math

import pytest
import torch

import core_attn
from core_attn.attention.topk import TopKAttention
from tests.core_attn.variants import SETTINGS


def dense_topk(q, k, v, top, causal, key_padding_mask=None):
    """Softmax over each row's ``top`` best visible scores of the full (N, N) matrix."""
    n = q.shape[2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed = (allowed.tril() if causal else allowed).expand_as(s)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    best = s.detach().topk(min(top, n), -1).indices
    keep = torch.zeros_like(allowed).scatter(-1, best, True) & allowed
    return torch.softmax(s.masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0) @ v


CASES = [pytest.param(kw, id=f"topk-{i}") for i, (kw, _) in enumerate(SETTINGS["topk"])]


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("n", [1, 4, 61, 96])  # fewer keys than k, odd lengths, multiples of the block
def test_exact_against_dense_reference(kw, n, padded):
    torch.manual_seed(n)
    attn = core_attn.build_attention("topk", **kw)
    q, k, v = (torch.randn(2, 3, n, 8, requires_grad=True) for _ in range(3))
    kpm = None
    if padded:
        kpm = torch.zeros(2, n, dtype=torch.bool)
        kpm[-1, n - max(1, n // 5):] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    ref = dense_topk(q, k, v, attn.top_k, attn.causal, kpm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # inference takes the same forward without the autograd function
        torch.testing.assert_close(attn(q, k, v, key_padding_mask=kpm), out)


def test_keeps_exactly_k_keys_and_all_keys_is_dense():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 50, 8) for _ in range(3))
    full = core_attn.build_attention("dense")(q, k, v)
    torch.testing.assert_close(TopKAttention(top_k=50, block_size=16)(q, k, v), full)
    torch.testing.assert_close(TopKAttention(top_k=500)(q, k, v), full)  # k > N: every key
    # one-hot values read back each query's chosen keys: k of them, with positive weights summing to 1
    eye = torch.eye(50).expand(1, 2, 50, 50)
    w = TopKAttention(top_k=7, block_size=9)(q, k, eye)
    assert ((w > 0).sum(-1) == 7).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 50))


def test_saved_state_is_linear_in_n():
    """Training keeps q, k, v, the output, the chosen indices (N k) and the lse: no (N, N) tensor."""
    n, top = 512, 8
    q, k, v = (torch.randn(1, 1, n, 4, requires_grad=True) for _ in range(3))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        TopKAttention(top_k=top, block_size=32)(q, k, v)
    assert saved and max(saved) <= n * max(top, 4)


def test_errors_name_the_key_the_value_and_the_range():
    build = functools.partial(core_attn.build_attention, "topk")
    with pytest.raises(ValueError, match=r"top_k=0 is out of range; expected 1 <= top_k <= inf"):
        build(top_k=0)
    with pytest.raises(ValueError, match=r"block_size=0 is out of range; expected 1 <= block_size <= inf"):
        build(block_size=0)
    with pytest.raises(ValueError, match=r"top_k=2.5 must be an integer"):
        build(top_k=2.5)
    with pytest.raises(ValueError, match=r"attention 'topk' got unknown hyper-parameter 'topk'.*Did you mean 'top_k'\?"):
        build(topk=3)
