"""Streaming equals one pass: outputs within 1e-5 (fp32) over inputs many chunks long, odd chunk and step
sizes, causal and not, dilation, rotary and learned positions; variants that need the whole sequence are
named in the error."""

from __future__ import annotations

import pytest
import torch

from core_attn import build_attention
from core_attn.layers import TransformerEncoder
from core_attn.streaming import Reach, position_offset, receptive_field, stream, stream_encoder


def _encoder(depth=3, positions="rotary", max_len=None, **attn):
    torch.manual_seed(0)
    enc = TransformerEncoder(32, depth, 4, attention=lambda: build_attention("local", **attn), positions=positions,
                             max_len=max_len, mlp_ratio=2.0)
    return enc.eval()


def _chunks(x, sizes):
    out, i, k = [], 0, 0
    while i < x.shape[1]:
        n = sizes[k % len(sizes)]
        out.append(x[:, i:i + n])
        i, k = i + n, k + 1
    return out


@pytest.mark.parametrize("attn, positions", [
    (dict(window=8), "rotary"),
    (dict(window=8, causal=True), "rotary"),
    (dict(window=5, dilation=3), "none"),
    (dict(window=4, window_left=6, window_right=2), "learned"),
])
@pytest.mark.parametrize("sizes, step", [([37], 64), ([1, 7, 130, 3], 29), ([500], 500)])
def test_stream_encoder_equals_one_pass(attn, positions, sizes, step):
    enc = _encoder(positions=positions, max_len=1000 if positions == "learned" else None, **attn)
    x = torch.randn(2, 997, 32)
    with torch.no_grad():
        want = enc(x)
        got = torch.cat(list(stream_encoder(enc, _chunks(x, sizes), step=step)), dim=1)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_receptive_field_adds_windows_times_dilation():
    assert receptive_field(_encoder(depth=3, window=8)) == Reach(24, 24)
    assert receptive_field(_encoder(depth=2, window=8, causal=True)) == Reach(16, 0)
    assert receptive_field(_encoder(depth=2, window=5, dilation=3)) == Reach(30, 30)


def test_outputs_come_out_as_soon_as_their_halo_has_arrived():
    enc = _encoder(depth=2, window=8, causal=True)
    seen = []

    def chunks():
        for i in range(10):
            seen.append(i)
            yield torch.randn(1, 16, 32)

    with torch.no_grad():
        for j, _ in enumerate(stream_encoder(enc, chunks(), step=16)):
            assert seen[-1] == j  # causal: chunk j's outputs before chunk j+1 is read


def test_stream_keeps_only_the_halo_and_a_step():
    lengths = []

    def forward(x, offset):
        lengths.append(x.shape[1])
        return x

    x = torch.arange(10_000.0)[None]
    out = torch.cat(list(stream(forward, _chunks(x, [333]), reach=Reach(20, 10), step=100)), dim=1)
    assert torch.equal(out, x) and max(lengths) <= 20 + 100 + 10


def test_position_offset_restores_and_matches_absolute_positions():
    enc = _encoder(depth=1, window=4)
    rot = enc.blocks[0].attn.rotary
    cos_full, _ = rot.cos_sin(300, "cpu", torch.float32)
    with position_offset(enc, 200):
        assert rot.position_offset == 200
        cos_part, _ = rot.cos_sin(100, "cpu", torch.float32, rot.position_offset)
    assert rot.position_offset == 0 and torch.equal(cos_part, cos_full[200:])


@pytest.mark.parametrize("name, kw, match", [
    ("dense", {}, r"block 0: attention=dense cannot be streamed exactly: every query reads every key"),
    ("bigbird", dict(block_size=16), r"block 0: attention=bigbird cannot be streamed exactly: its random"),
    ("linear", {}, r"attention=linear cannot be streamed exactly: it mixes every position"),
    ("local", dict(window=4, global_tokens=[0]), r"block 0: attention=local with global_tokens=\[0\]: a global token"),
])
def test_whole_sequence_variants_are_named(name, kw, match):
    enc = TransformerEncoder(32, 2, 4, attention=lambda: build_attention(name, **kw)).eval()
    with pytest.raises(ValueError, match=match):
        next(stream_encoder(enc, [torch.randn(1, 64, 32)]))


def test_step_shorter_than_the_window_is_refused():
    with pytest.raises(ValueError, match=r"step=4 is shorter than the widest attention window \(8 positions\)"):
        next(stream_encoder(_encoder(window=8), [torch.randn(1, 64, 32)], step=4))
