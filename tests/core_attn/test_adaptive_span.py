"""adaptive_span against its dense reference (outputs and gradients, the spans' included), its band, its
penalty and its errors."""

import functools
import math

import pytest
import torch

import core_attn
from core_attn.attention.adaptive_span import (AdaptiveSpanAttention, mean_span, soft_band_attention, span_mask,
                                               total_span_loss)
from core_attn.layers import TransformerEncoder
from tests.core_attn.variants import SETTINGS


def dense_adaptive_span(q, k, v, span, ramp, causal, key_padding_mask=None):
    """The paper's formula on the full (N, N) matrix: softmax, times the soft mask, renormalised."""
    n = q.shape[2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = (j <= i) if causal else torch.ones(n, n, dtype=torch.bool)
    allowed = allowed.expand_as(s)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    p = p * span_mask((i - j).abs().to(q.dtype), span.to(q.dtype)[:, None, None], ramp)
    total = p.sum(-1, keepdim=True)
    return (p / torch.where(total > 0, total, torch.ones_like(total))) @ v


def _spans(attn, fractions):
    with torch.no_grad():
        attn.span_fraction.copy_(torch.tensor(fractions))


CASES = [pytest.param(kw, id=f"adaptive_span-{i}") for i, (kw, _) in enumerate(SETTINGS["adaptive_span"])]


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("n", [1, 7, 61, 96])  # odd lengths, one inside a block, multiples of the block
def test_exact_against_dense_reference_with_span_gradients(kw, n, padded):
    torch.manual_seed(n)
    attn = core_attn.build_attention("adaptive_span", **kw)
    _spans(attn, [0.13, 0.41, 0.77])  # three different spans, none on an integer (the ramp's kinks)
    q, k, v = (torch.randn(2, 3, n, 8, requires_grad=True) for _ in range(3))
    kpm = None
    if padded:
        kpm = torch.zeros(2, n, dtype=torch.bool)
        kpm[-1, n - max(1, n // 5):] = True
    out = attn(q, k, v, key_padding_mask=kpm)
    ref = dense_adaptive_span(q, k, v, attn.spans(), attn.ramp, attn.causal, kpm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(out)
    inputs = (q, k, v, attn.span_fraction)
    got, want = torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)
    for a, r, name in zip(got, want, ("q", "k", "v", "span_fraction")):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4, msg=name)
    if n > 20:
        assert want[3].abs().min() > 0  # the spans do learn from the task


def test_band_follows_the_largest_learned_span():
    attn = AdaptiveSpanAttention(num_heads=4, max_span=512, ramp=32)
    _spans(attn, [0.0, 0.05, 0.1, 0.125])  # spans 0, 25.6, 51.2, 64 tokens
    assert attn.band() == 64 + 32 - 1
    _spans(attn, [0.0, 0.0, 1.0, 0.5])
    assert attn.band() == 512 + 32 - 1
    _spans(attn, [0.01, 0.02, 0.03, 0.04])
    assert attn.band() == math.ceil(0.04 * 512 + 32) - 1


def test_band_is_tight_and_sufficient():
    """Keys beyond the band have zero weight (a full-width band gives the same result); one key fewer
    changes the result (the band is not wider than it must be)."""
    torch.manual_seed(0)
    attn = AdaptiveSpanAttention(num_heads=2, max_span=64, ramp=8, causal=True)
    _spans(attn, [0.2, 0.45])  # 12.8 and 28.8 tokens: band 36
    q, k, v = (torch.randn(1, 2, 100, 8) for _ in range(3))
    width = attn.band()
    assert width == 36
    run = functools.partial(soft_band_attention, q, k, v, attn.spans().detach(), 8, causal=True)
    torch.testing.assert_close(run(width, block=16), run(99, block=16))
    # blocks of one query: no rounding of the band up to a block, so one key fewer drops distance 36 (m = 0.1)
    torch.testing.assert_close(run(width, block=1), run(width, block=16))
    assert not torch.allclose(run(width - 1, block=1), run(width, block=1))


def test_exact_in_float64_with_long_span_and_a_short_input():
    torch.manual_seed(1)
    attn = AdaptiveSpanAttention(num_heads=2, max_span=300, ramp=16, block_size=8).double()
    _spans(attn, [0.33, 0.9])  # spans longer than the input
    q, k, v = (torch.randn(1, 2, 45, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = attn(q, k, v)
    ref = dense_adaptive_span(q, k, v, attn.spans(), 16, False)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    inputs = (q, k, v, attn.span_fraction)
    for a, r in zip(torch.autograd.grad(out.sum(), inputs), torch.autograd.grad(ref.sum(), inputs)):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-8)


def test_span_loss_is_the_l1_penalty_and_training_clamps_the_spans():
    attn = AdaptiveSpanAttention(num_heads=2, max_span=100, ramp=4, span_penalty=0.01)
    _spans(attn, [0.2, 0.6])
    assert float(attn.span_loss().detach()) == pytest.approx(0.01 * (20 + 60) / 2)
    attn.span_loss().backward()
    torch.testing.assert_close(attn.span_fraction.grad, torch.full((2,), 0.01 * 100 / 2))
    _spans(attn, [-0.3, 1.4])  # an optimizer step left [0, 1]: the next training forward projects back
    x = torch.randn(1, 2, 10, 4, requires_grad=True)
    attn.train()(x, x, x)
    assert attn.span_fraction.tolist() == [0.0, 1.0]


def test_the_layers_size_the_spans_and_total_span_loss_sums_them():
    factory = functools.partial(AdaptiveSpanAttention, max_span=16, ramp=4, span_init=0.5, span_penalty=1e-3)
    enc = TransformerEncoder(32, depth=2, num_heads=4, attention=factory)
    spans = [m for m in enc.modules() if isinstance(m, AdaptiveSpanAttention)]
    assert len(spans) == 2 and all(m.span_fraction.shape == (4,) for m in spans)
    assert float(total_span_loss(enc).detach()) == pytest.approx(2 * 1e-3 * 8.0)
    assert mean_span(enc) == pytest.approx(8.0)
    assert total_span_loss(TransformerEncoder(32, depth=1, num_heads=4)) == 0.0  # no span: nothing added
    assert mean_span(TransformerEncoder(32, depth=1, num_heads=4)) is None
    out = enc(torch.randn(2, 20, 32))
    (out.square().mean() + total_span_loss(enc)).backward()
    assert all(m.span_fraction.grad is not None for m in spans)


def test_errors_name_the_key_the_value_and_the_range():
    build = functools.partial(core_attn.build_attention, "adaptive_span", num_heads=2)
    with pytest.raises(ValueError, match=r"max_span=0 is out of range; expected 1 <= max_span <= inf"):
        build(max_span=0)
    with pytest.raises(ValueError, match=r"ramp=0 is out of range; expected 1 <= ramp <= inf"):
        build(ramp=0)
    with pytest.raises(ValueError, match=r"span_init=1.5 is out of range; expected 0.0 <= span_init <= 1.0"):
        build(span_init=1.5)
    with pytest.raises(ValueError, match=r"span_penalty=-0.1 is out of range; expected 0.0 <= span_penalty <= inf"):
        build(span_penalty=-0.1)
    with pytest.raises(ValueError, match=r"block_size=4 is out of range; expected 8 <= block_size <= inf"):
        build(block_size=4)
    with pytest.raises(ValueError, match=r"attention 'adaptive_span' got unknown hyper-parameter 'max_spam'.*"
                                         r"Did you mean 'max_span'\?"):
        build(max_spam=8)
    x = torch.randn(1, 3, 8, 4)
    with pytest.raises(ValueError, match=r"q, k, v have H=3 heads but num_heads=2 sized the spans"):
        build()(x, x, x)
